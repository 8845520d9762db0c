"""Greedy generation with HF `generate`, for sample selection and counterfactual verification."""

from __future__ import annotations

import torch

# End-of-turn markers of common chat templates; generation stops at any that the tokenizer knows.
END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(ids)


def greedy_generate(model, texts: list[str], *, max_new_tokens: int = 256, batch_size: int = 8) -> list[str]:
    """Continue each rendered prompt text greedily; returns the decoded continuations (special tokens dropped)."""
    tok, hf = model.tokenizer, model.hf_model
    pad = model.pad_token_id
    outputs: list[str] = [""] * len(texts)
    encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):  # left padding: generation continues from the right edge
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        room = (model.max_length or width + max_new_tokens) - width
        if room <= 0:
            continue  # the prompt already fills the context: nothing to generate
        with torch.no_grad():
            out = hf.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                              max_new_tokens=min(max_new_tokens, room), do_sample=False, pad_token_id=pad,
                              eos_token_id=stop_ids(tok))
        for r, i in enumerate(rows):
            outputs[i] = tok.decode(out[r, width:], skip_special_tokens=True)
    return outputs
