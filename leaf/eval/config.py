"""`leaf eval`'s settings: every option, its help text and its checks (no model or harness is needed to check them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc
from leaf.serve.backends import BACKENDS
from leaf.sandbox import SandboxOptions
from leaf.serve.run import ServeConfig
from leaf.eval.tasks import TASKS, get_task


@dataclass
class EvalConfig(SandboxOptions):
    models: list[str] = field(metadata=doc(
        "Model folders (or hub ids), e.g. the student before distillation, after KD and after LeaF; every model runs "
        "with the same settings."))
    output: Path = field(metadata=doc(
        "Results folder: results.json, results.md, the task files the harness read (tasks/) and every prompt and "
        "answer (samples/)."))
    names: list[str] = field(default_factory=list, metadata=doc(
        "Display names of the models, one per --model, e.g. pre-kd, kd, leaf (default: folder names); a recipe's "
        "paper numbers are matched to them."))
    tasks: list[str] = field(default_factory=lambda: ["gsm8k_cot"], metadata=doc(
        f"Benchmarks (lm-evaluation-harness tasks on local data): {', '.join(TASKS)}."))
    data: list[Path] = field(default_factory=lambda: [Path("data")], metadata=doc(
        "Local data: a folder made by recipes/prepare_data.py (gsm8k_test.jsonl, math500.jsonl), or one file per "
        "--task, in order."))
    backend: str = field(default="auto", metadata=doc(
        "The harness's model: vllm, hf (transformers) or auto (vllm when installed)."))
    limit: int | None = field(default=None, metadata=doc("Score only the first N problems of each task."))
    max_tokens: int = field(default=512, metadata=doc("Greedy generation budget per problem."))
    num_fewshot: int | None = field(default=None, metadata=doc(
        "Few-shot examples per prompt (default: the task's own, e.g. 8 for gsm8k_cot, 4 for math500)."))
    chat_template: bool = field(default=True, metadata=doc(
        "Render prompts with each model's chat template, few-shot examples as earlier turns (--no-chat-template: "
        "plain text, for base models without one)."))
    batch_size: int = field(default=8, metadata=doc("HF backend: prompts per batch (vLLM schedules all at once)."))
    device: str = field(default="cpu", metadata=doc("cpu or cuda."))
    dtype: str = field(default="float32", metadata=doc("Model dtype (bfloat16 on GPUs)."))
    max_model_len: int | None = field(default=None, metadata=doc("vLLM: context length cap (default: the model's)."))
    tensor_parallel_size: int = field(default=1, metadata=doc("vLLM: GPUs per model."))
    seed: int = field(default=0, metadata=doc("Seed of the harness, the model backends and few-shot sampling."))
    samples: int = field(default=1, metadata=doc(
        "Code tasks: generations per problem. 1: greedy, pass@1; N > 1: sampled at --temperature, pass@k for "
        "k <= N (the unbiased estimator of Chen et al. 2021)."))
    temperature: float = field(default=0.8, metadata=doc("Code tasks with --samples N > 1: sampling temperature "
                                                         "(top-p 0.95)."))
    paper: Path | None = field(default=None, metadata=doc(
        "A recipe file whose [recipe] paper_numbers go beside the results (default: the --config recipe)."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights: only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoint (only if trusted)."))

    model_names = ServeConfig.model_names  # the names leaf serve gives: --name, else folder names (runs/x/final -> x)

    def __post_init__(self) -> None:
        self.output = check_output_folder(self.output, allow_nonempty=True)
        self.data = [Path(p) for p in ([self.data] if isinstance(self.data, (str, Path)) else self.data)]
        self.paper = Path(self.paper) if self.paper is not None else None
        for name in self.tasks:
            get_task(name)
        checks = [
            (bool(self.models), "Give at least one --model."),
            (bool(self.tasks), "Give at least one --task."),
            (len(set(self.tasks)) == len(self.tasks), f"A --task is given twice: {', '.join(self.tasks)}."),
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}."),
            (not self.names or len(self.names) == len(self.models),
             f"{len(self.names)} --name for {len(self.models)} --model: give one name per model, or none."),
            (len(set(self.model_names())) == len(self.models),
             f"Two models have the same name ({', '.join(self.model_names())}): give each a --name."),
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}."),
            (self.max_tokens >= 1, f"--max-tokens must be at least 1, got {self.max_tokens}."),
            (self.num_fewshot is None or self.num_fewshot >= 0,
             f"--num-fewshot must be 0 or more, got {self.num_fewshot}."),
            (self.batch_size >= 1 and self.tensor_parallel_size >= 1,
             "--batch-size and --tensor-parallel-size must be at least 1."),
            (self.samples >= 1, f"--samples must be at least 1, got {self.samples}."),
            (self.samples == 1 or all(get_task(t).code for t in self.tasks),
             f"--samples {self.samples} (pass@k) is for code tasks; "
             f"{', '.join(t for t in self.tasks if not get_task(t).code)} are scored greedily: run them apart."),
            (self.samples == 1 or self.temperature > 0, "--samples N > 1 needs --temperature above 0."),
            (self.temperature >= 0, f"--temperature must be 0 or more, got {self.temperature}."),
            (self.max_model_len is None or self.max_model_len >= 1,
             f"--max-model-len must be at least 1, got {self.max_model_len}."),
        ]
        for ok, message in checks:
            if not ok:
                raise LeafError(message)
        self.sandbox()  # its options' checks

    def code_tasks(self) -> list[str]:
        return [name for name in self.tasks if get_task(name).code]

    def settings(self) -> dict:
        """What every model of the comparison shares (results.json's `settings`)."""
        skip = {"models", "names", "output", "tasks", "data", "paper", "allow_code_execution"}
        return {k: v for k, v in asdict(self).items() if k not in skip}
