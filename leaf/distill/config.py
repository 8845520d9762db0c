"""The settings of `leaf distill` (stage 2): one dataclass whose field help the CLI reuses, checked on creation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc

MODES = ("kd", "instr", "instr+resp")
TEACHER_ENGINES = ("hf", "vllm")


@dataclass
class DistillConfig:
    teacher: str = field(metadata=doc("Teacher model: local HF folder or hub id (same vocabulary as the student)."))
    student: str = field(metadata=doc("Student model to train: local HF folder or hub id."))
    data: Path = field(metadata=doc(
        "A `leaf analyze` output folder (or its samples.jsonl), or any dataset analyze reads (with --counterfactuals)."))
    output: Path = field(metadata=doc("Output folder: checkpoints/, log.jsonl, final/ (the distilled student)."))
    mode: str = field(default="instr+resp", metadata=doc(
        "kd: originals only (the paper's KD w/o mask); instr: + instruction counterfactuals; instr+resp: + both."))
    lam: str = field(default="linear:0.8:0.5", metadata=doc(
        "λ: a constant (1.0 = plain KD) or a schedule linear:START:END / cosine:START:END over training."))
    divergence: str = field(default="forward_kl", metadata=doc("forward_kl, reverse_kl or jsd."))
    beta: float = field(default=0.5, metadata=doc("β of the jsd divergence."))
    temperature: float = field(default=1.0, metadata=doc("Softmax temperature t (loss scaled by t²)."))
    ce_weight: float = field(default=0.0, metadata=doc("Weight of a cross-entropy term on the reference response."))
    max_steps: int | None = field(default=None, metadata=doc(
        "Optimizer steps (default 100, unless --num-train-epochs is given instead)."))
    num_train_epochs: float | None = field(default=None, metadata=doc(
        "Train for this many passes over the data instead of --max-steps (one pass uses every counterfactual once, "
        "so each original appears once per counterfactual it has at one level); the λ schedule spans the steps "
        "this makes."))
    batch_size: int = field(default=4, metadata=doc("Samples per device per forward/backward."))
    grad_accum: int = field(default=1, metadata=doc("Gradient accumulation steps (effective batch = batch x accum x devices)."))
    lr: float = field(default=1e-5, metadata=doc("AdamW learning rate (paper: 1e-5)."))
    warmup: float = field(default=0.03, metadata=doc("Warmup, as a fraction of the steps."))
    save_steps: int = field(default=50, metadata=doc("Checkpoint every N steps."))
    max_length: int | None = field(default=None, metadata=doc("Drop samples longer than this (default: the model's)."))
    chunk_size: int = field(default=1024, metadata=doc("Positions per float32 log-softmax chunk in the loss."))
    seed: int = field(default=0, metadata=doc("Seed of initialisation order, data order and counterfactual pairing."))
    device: str = field(default="cpu", metadata=doc("cpu or cuda (under accelerate launch, set by accelerate)."))
    dtype: str = field(default="float32", metadata=doc("float32 or bfloat16 (mixed precision on GPU)."))
    gradient_checkpointing: bool = field(default=False, metadata=doc("Trade compute for activation memory."))
    cache_teacher: bool = field(default=False, metadata=doc(
        "First write the teacher's top-k log-probs of every original and counterfactual to OUTPUT/teacher_cache, "
        "then train from it without the teacher in memory (the path for very large teachers)."))
    teacher_engine: str = field(default="hf", metadata=doc(
        "What writes the teacher cache: hf (one forward pass per sequence) or vllm (vLLM's prompt_logprobs, every "
        "sequence in flight at once; implies --cache-teacher; one process, the teacher spread by "
        "--teacher-tensor-parallel-size). docs/scale.md has the measured speed."))
    teacher_tensor_parallel_size: int = field(default=1, metadata=doc(
        "--teacher-engine vllm: GPUs the teacher is split over (vLLM tensor parallelism)."))
    top_k: int = field(default=64, metadata=doc("Entries per position in the teacher cache (the tail mass is kept)."))
    cache_only: bool = field(default=False, metadata=doc(
        "Write the teacher cache (--cache-teacher) and stop; a later run on the same --output trains from it "
        "without loading the teacher (e.g. the cache in one process with --teacher-device-map auto, training "
        "under accelerate launch)."))
    cross_tokenizer: bool = field(default=False, metadata=doc(
        "Distil a teacher whose tokenizer differs from the student's: responses aligned through character offsets, "
        "the divergence over the vocabulary entries both spell the same plus the rest of the mass, and ULD's "
        "sorted-probability distance on the rest (see leaf/distill/cross_tokenizer.py). Same tokenizer: plain KD."))
    uld_weight: float = field(default=1.0, metadata=doc(
        "--cross-tokenizer: weight of the sorted-probability (ULD) term on the entries that do not correspond."))
    teacher_device_map: str | None = field(default=None, metadata=doc(
        "Spread the teacher over all visible GPUs (transformers device_map, e.g. auto); one process only."))
    counterfactuals: Path | None = field(default=None, metadata=doc(
        "With a plain --data dataset: a file in the same format whose rows hold the id of their original and its "
        "pruned prompt and/or response."))
    prompt_field: str | None = field(default=None, metadata=doc("Prompt field of a plain dataset (as in analyze)."))
    response_field: str | None = field(default=None, metadata=doc("Response field of a plain dataset."))
    id_field: str = field(default="id", metadata=doc("Id field matching counterfactual rows to originals."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights: only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoints (only if trusted)."))
    logging_steps: int = field(default=10, metadata=doc(
        "Every N steps (and at the last): print step, losses, λ, lr and tokens/s on stderr and send the means "
        "since the last report to --report-to; 0: never (log.jsonl still gets every step)."))
    report_to: list[str] | None = field(default=None, metadata=doc(
        "Where the Trainer's integrations send the curves (transformers' report_to): tensorboard (into "
        "OUTPUT/tensorboard), wandb, trackio, ..., all, or none; repeat or give a comma list. Default: tensorboard "
        "when it is installed, else none."))
    eval_data: Path | None = field(default=None, metadata=doc(
        "Held-out samples, read like --data (an analyze output, or a plain dataset: originals only): both loss "
        "terms without gradients every --eval-steps and at the end (eval lines in log.jsonl, eval_* in reports)."))
    eval_steps: int | None = field(default=None, metadata=doc(
        "With --eval-data: evaluate every N steps and at the last; 0: at the last only (default: --logging-steps)."))
    lora_r: int = field(default=0, metadata=doc(
        "Train a LoRA adapter of this rank (peft, pip install peft) instead of every weight; 0: full training. "
        "final/ then holds the adapter merged into the weights, and final/adapter/ the adapter alone."))
    lora_alpha: int = field(default=32, metadata=doc("LoRA scaling α (the update is scaled by α / r)."))
    lora_dropout: float = field(default=0.05, metadata=doc("Dropout on the LoRA branch's input."))
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata=doc(
        "Modules that get a LoRA adapter: names or name suffixes (q_proj, v_proj, ...; repeat or give a comma "
        "list), or all-linear, the default (every linear layer but the output head)."))
    resume: bool = field(default=False, metadata=doc("Continue from the last checkpoint in --output."))

    def __post_init__(self) -> None:
        from leaf.distill.losses import get_divergence, lambda_at

        self.data, self.output = Path(self.data), Path(self.output)
        check_output_folder(self.output, allow_nonempty=True)
        if self.cache_only or self.teacher_engine == "vllm":
            self.cache_teacher = True
        if self.counterfactuals is not None:
            self.counterfactuals = Path(self.counterfactuals)
        if self.eval_data is not None:
            self.eval_data = Path(self.eval_data)
        if self.max_steps is not None and self.num_train_epochs is not None:
            raise LeafError(f"--max-steps {self.max_steps} and --num-train-epochs {self.num_train_epochs:g} both "
                            "set the length of training: give one of them (a recipe's max_steps counts).")
        if self.num_train_epochs is None and self.max_steps is None:
            self.max_steps = 100
        self.report_to = reporting_integrations(self.report_to)
        self.lora_target_modules = [m.strip() for entry in self.lora_target_modules for m in entry.split(",")
                                    if m.strip()]
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}."),
            (self.logging_steps >= 0, f"--logging-steps must be 0 or more, got {self.logging_steps}."),
            ((self.max_steps is None or self.max_steps >= 1) and self.batch_size >= 1 and self.grad_accum >= 1,
             "--max-steps, --batch-size and --grad-accum must be at least 1."),
            (self.num_train_epochs is None or self.num_train_epochs > 0,
             f"--num-train-epochs must be positive, got {self.num_train_epochs}."),
            (self.eval_data is not None or self.eval_steps is None,
             f"--eval-steps {self.eval_steps} needs --eval-data (the held-out samples)."),
            (self.eval_steps is None or self.eval_steps >= 0,
             f"--eval-steps must be 0 or more, got {self.eval_steps}."),
            (not (self.eval_data is not None and self.cache_teacher),
             "--eval-data needs the online teacher (the teacher cache holds the training samples only): drop "
             "--cache-teacher or --eval-data."),
            (self.lora_r >= 0 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1,
             f"LoRA needs --lora-r >= 0 (0: off), --lora-alpha > 0 and --lora-dropout in [0, 1); got "
             f"{self.lora_r}, {self.lora_alpha}, {self.lora_dropout}."),
            (bool(self.lora_target_modules), "--lora-target-modules names no module."),
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}."),
            (0 <= self.warmup < 1, f"--warmup is a fraction in [0, 1), got {self.warmup}."),
            (self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}."),
            (self.teacher_engine in TEACHER_ENGINES,
             f"--teacher-engine must be one of {', '.join(TEACHER_ENGINES)}, got {self.teacher_engine!r}."),
            (self.teacher_tensor_parallel_size >= 1,
             f"--teacher-tensor-parallel-size must be at least 1, got {self.teacher_tensor_parallel_size}."),
            (not (self.cross_tokenizer and self.cache_teacher),
             "--cross-tokenizer needs the teacher's full distributions online: drop --cache-teacher."),
            (self.uld_weight >= 0, f"--uld-weight must be 0 or more, got {self.uld_weight}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (self.chunk_size >= 1, f"--chunk-size must be at least 1 (positions per chunk), got {self.chunk_size}."),
            (self.save_steps >= 1, f"--save-steps must be at least 1, got {self.save_steps}."),
            (self.max_length is None or self.max_length >= 2,
             f"--max-length must be at least 2 (a prompt and a response token), got {self.max_length}."),
            (self.ce_weight >= 0, f"--ce-weight must be 0 or more, got {self.ce_weight}."),
            (0 < self.beta < 1, f"--beta must be in (0, 1), got {self.beta}."),
        ]
        for ok, message in checks:
            if not ok:
                raise LeafError(message)
        get_divergence(self.divergence, self.beta)
        total = self.max_steps or 2  # with --num-train-epochs the steps are known once the data is: check both ends
        for step in (0, total - 1):
            value = lambda_at(self.lam, step, total)
            if not 0 <= value <= 1:
                raise LeafError(f"λ must stay in [0, 1]; {self.lam!r} gives {value} at step {step}.")

    def fingerprint(self) -> dict:
        """The settings a resumed run must share (those that change the weights it ends with), and the data's
        identity (data_sha256, counterfactuals_sha256: a path names a file, not its contents). Options added later
        enter only when set, so that a run started before them still resumes."""
        skip = {"output", "resume", "save_steps", "cache_only", "teacher_device_map", "trust_remote_code",
                "teacher_engine", "teacher_tensor_parallel_size",
                "logging_steps", "report_to", "eval_data", "eval_steps"}
        if self.num_train_epochs is None:
            skip.add("num_train_epochs")
        if not self.lora_r:
            skip |= {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in skip}
        from leaf.run_folder import code_version

        return {**values, **self.data_identity(), "code": code_version()}

    def data_identity(self) -> dict:
        """sha256 of what --data (an analyze folder: its samples.jsonl, as its summary records it) and
        --counterfactuals hold, computed once per run."""
        if "_data_identity" not in self.__dict__:
            from leaf.run_folder import data_digest

            self._data_identity = {"data_sha256": data_digest(self.data)}
            if self.counterfactuals is not None:
                self._data_identity["counterfactuals_sha256"] = data_digest(self.counterfactuals)
        return self._data_identity


# transformers' integrations (report_to) that leaf checks are installed before loading anything; the others the
# Trainer checks when it starts
INTEGRATION_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}


def reporting_integrations(given: list[str] | None) -> list[str]:
    """--report-to as the Trainer's report_to list: comma lists split, none -> [], all kept; the default is
    tensorboard when it is installed (leaf wrote TensorBoard curves whenever it could before it had the option).
    LeafError for an integration whose package is missing."""
    from importlib.util import find_spec

    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if given is None:
        return ["tensorboard"] if any(find_spec(p) for p in INTEGRATION_PACKAGES["tensorboard"]) else []
    names = [n.strip() for entry in given for n in entry.split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise LeafError(f"--report-to none means no integration; drop it or the others ({', '.join(names)}).")
        return []
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK and name != "all":
            raise LeafError(f"--report-to {name!r} is no integration of transformers. Available: all, none, "
                            f"{', '.join(INTEGRATION_TO_CALLBACK)}.")
        packages = INTEGRATION_PACKAGES.get(name, ())
        if packages and not any(find_spec(p) for p in packages):
            raise LeafError(f"--report-to {name}: the {packages[0]} package is not installed (pip install "
                            f"{packages[0]}), or pass --report-to none.")
    return names
