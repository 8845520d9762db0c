"""Where an assistant turn ends: the end-of-turn markers of common chat templates, and a tokenizer's stop tokens.

Generation (leaf.serve.engines) stops at these tokens; distillation masks and aligns responses up to them.
"""

from __future__ import annotations

# End-of-turn markers of common chat templates; a tokenizer stops at those it knows.
END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def stop_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS and every end-of-turn marker in its vocabulary, sorted."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(ids)
