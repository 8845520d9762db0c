"""`leaf distill`: causal attention distillation on original and counterfactual inputs (stage 2).

    leaf distill --teacher T --student S --data runs/analyze --output runs/distill --mode instr+resp \\
        --lambda-schedule linear:0.8:0.5 --max-steps 200

Per step, over response positions only: λ·D(p_T(·|X) || p_S(·|X)) + (1-λ)·D(p_T(·|X\\A) || p_S(·|X\\A)), each original
paired with one counterfactual per level it has (instruction, response; the second term is then their mean), every
counterfactual used in turn over the original's appearances; samples without one use the first term alone. Built on
the transformers Trainer (custom loss): AdamW, cosine schedule with warmup, gradient accumulation, bf16, gradient checkpointing,
checkpoints and `--resume`; under `accelerate launch` the same command runs DDP/FSDP/DeepSpeed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.distill.data import (Example, PairedData, build_examples, is_analyze_output, make_collator,
                               read_analyze_output, read_dataset)
from leaf.errors import LeafError
from leaf.io import check_output_folder, check_same_settings, write_json_atomic, write_text_atomic
from leaf.options import doc

MODES = ("kd", "instr", "instr+resp")


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
    max_steps: int = field(default=100, metadata=doc("Optimizer steps."))
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
    top_k: int = field(default=64, metadata=doc("Entries per position in the teacher cache (the tail mass is kept)."))
    cache_only: bool = field(default=False, metadata=doc(
        "Write the teacher cache (--cache-teacher) and stop; a later run on the same --output trains from it "
        "without loading the teacher (e.g. the cache in one process with --teacher-device-map auto, training "
        "under accelerate launch)."))
    cross_tokenizer: bool = field(default=False, metadata=doc(
        "Distil a teacher whose tokenizer differs from the student's: responses aligned through character offsets, "
        "the divergence over the vocabulary entries both spell the same plus the rest of the mass, and ULD's "
        "sorted-probability distance on the rest (see leaf/cross_tokenizer.py). Same tokenizer: plain KD."))
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
    allow_pickle: bool = field(default=False, metadata=doc("Allow pickle (.bin) weights."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoints (only if trusted)."))
    logging_steps: int = field(default=10, metadata=doc(
        "Print step, losses, λ, lr and tokens/s on stderr every N steps (and at the last); 0: never."))
    resume: bool = field(default=False, metadata=doc("Continue from the last checkpoint in --output."))

    def __post_init__(self) -> None:
        from leaf.distill.losses import get_divergence, lambda_at

        self.data, self.output = Path(self.data), Path(self.output)
        check_output_folder(self.output, allow_nonempty=True)
        if self.cache_only:
            self.cache_teacher = True
        if self.counterfactuals is not None:
            self.counterfactuals = Path(self.counterfactuals)
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}."),
            (self.logging_steps >= 0, f"--logging-steps must be 0 or more, got {self.logging_steps}."),
            (self.max_steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
             "--max-steps, --batch-size and --grad-accum must be at least 1."),
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}."),
            (0 <= self.warmup < 1, f"--warmup is a fraction in [0, 1), got {self.warmup}."),
            (self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}."),
            (not (self.cross_tokenizer and self.cache_teacher),
             "--cross-tokenizer needs the teacher's full distributions online: drop --cache-teacher."),
            (self.uld_weight >= 0, f"--uld-weight must be 0 or more, got {self.uld_weight}."),
        ]
        for ok, message in checks:
            if not ok:
                raise LeafError(message)
        get_divergence(self.divergence, self.beta)
        for step in (0, self.max_steps - 1):
            value = lambda_at(self.lam, step, self.max_steps)
            if not 0 <= value <= 1:
                raise LeafError(f"λ must stay in [0, 1]; {self.lam!r} gives {value} at step {step}.")

    def fingerprint(self) -> dict:
        skip = {"output", "resume", "save_steps", "cache_only", "teacher_device_map", "trust_remote_code",
                "logging_steps"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in skip}


def last_complete_checkpoint(folder: Path) -> tuple[str | None, list[Path]]:
    """The newest Trainer checkpoint that was completely written (its trainer_state.json is saved last), and the
    newer, partly written ones an interruption left behind."""
    if not folder.is_dir():
        return None, []
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir()
                    if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))), reverse=True)
    partial = []
    for _, path in found:
        if (path / "trainer_state.json").exists():
            return str(path), partial
        partial.append(path)
    return None, partial


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; a line cut short by a kill counts as past every checkpoint (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


def tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed (pip install tensorboard), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


def load_records_for(config: DistillConfig) -> tuple[list[dict], int]:
    """Originals with counterfactuals, from an analyze output or a dataset + counterfactual file; and the number of
    counterfactual rows dropped as identical to their original."""
    if not config.data.exists():
        raise LeafError(f"--data {str(config.data)!r} does not exist.")
    if config.counterfactuals is None and is_analyze_output(config.data):
        return read_analyze_output(config.data), 0
    if config.counterfactuals is not None and is_analyze_output(config.data):
        raise LeafError(f"{config.data} is a `leaf analyze` output, which holds its own counterfactuals; drop "
                        "--counterfactuals, or pass the plain dataset as --data.")
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if config.data.is_dir() and not any((config.data / name).exists() for name in saved):
        raise LeafError(f"{str(config.data)!r} is neither a `leaf analyze` output (no samples.jsonl) nor a dataset "
                        "saved with save_to_disk. Run leaf analyze first and pass its output folder, or pass a "
                        "dataset file with --counterfactuals FILE.")
    if config.counterfactuals is None and config.mode != "kd":
        raise LeafError(f"{config.data} is a plain dataset without counterfactuals, so --mode {config.mode} has "
                        "nothing to prune: pass --counterfactuals FILE, run leaf analyze on it first, or use --mode kd.")
    return read_dataset(config.data, config.counterfactuals, prompt_field=config.prompt_field,
                        response_field=config.response_field, id_field=config.id_field)


def print_progress_line(line: dict, max_steps: int) -> None:
    """One human line per --logging-steps on stderr, above the progress bar (stdout stays machine-readable)."""
    import sys

    from tqdm import tqdm

    cf = line["kd_counterfactual"]
    text = (f"step {line['step']}/{max_steps}  kd_original {line['kd_original']:.4f}"
            + (f"  kd_counterfactual {cf:.4f}" if cf is not None else "")
            + (f"  λ {line['lambda']:.2f}" if line["lambda"] is not None else "")
            + (f"  lr {line['lr']:.2e}" if line["lr"] is not None else "")
            + f"  {line['tokens_per_second']:.0f} tok/s")
    tqdm.write(text, file=sys.stderr)


def load_checkpoint_weights(model, checkpoint: str | Path) -> None:
    """Copy a saved checkpoint's weights into `model` in place, read the way from_pretrained reads them (key renames
    and conversions applied, tied weights tied); LeafError if any key is missing, unexpected or of another shape."""
    import torch
    from accelerate.utils import extract_model_from_parallel

    target = extract_model_from_parallel(model)
    loaded, info = type(target).from_pretrained(str(checkpoint), dtype=next(target.parameters()).dtype,
                                                output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    ours, theirs = target.state_dict(), loaded.state_dict()
    if ours.keys() != theirs.keys():
        problems["keys_differ"] = sorted(set(ours) ^ set(theirs))[:10]
    if problems:
        raise LeafError(f"Checkpoint {checkpoint} does not fit the student ({problems}). Resuming would train "
                        "from partly random weights; start a new run (another --output) instead.")
    with torch.no_grad():
        for name, tensor in ours.items():
            tensor.copy_(theirs[name])
    del loaded


def check_vocabularies_before_loading(config: DistillConfig) -> None:
    """The vocabulary check on tokenizers and configs alone, so that a mismatched pair fails in seconds instead of
    after both models load (the check on the loaded models, check_vocabularies, still runs)."""
    from transformers import AutoConfig

    from leaf.hooks.loading import load_tokenizer

    from leaf.hooks.loading import resolve_source

    trust = config.trust_remote_code
    t_tok, s_tok = (load_tokenizer(config.teacher, trust_remote_code=trust),
                    load_tokenizer(config.student, trust_remote_code=trust))
    sizes = []
    for path in (config.teacher, config.student):
        try:
            config_ = AutoConfig.from_pretrained(resolve_source(path), trust_remote_code=trust)
            config_ = config_.get_text_config() if hasattr(config_, "get_text_config") else config_
            sizes.append(getattr(config_, "vocab_size", None))
        except (OSError, ValueError):
            sizes.append(None)  # load_model gives the full error
    t_size, s_size = sizes
    if t_tok.get_vocab() != s_tok.get_vocab() or (t_size and s_size and t_size < s_size):
        raise LeafError(
            f"Teacher and student vocabularies differ (teacher tokenizer {len(t_tok.get_vocab())} tokens / logits "
            f"{t_size}, student tokenizer {len(s_tok.get_vocab())} tokens / logits {s_size}). Logit distillation "
            "needs the same token ids: pick a teacher from the student's model family, or pass --cross-tokenizer.")


def check_vocabularies(teacher, student) -> None:
    """Same token ids for both; a teacher whose logit matrix is only padded larger is fine (cut in the loss)."""
    t_vocab, s_vocab = teacher.tokenizer.get_vocab(), student.tokenizer.get_vocab()
    t_size = teacher.hf_model.get_output_embeddings().weight.shape[0]
    s_size = student.hf_model.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab or t_size < s_size:
        raise LeafError(
            f"Teacher and student vocabularies differ (teacher tokenizer {len(t_vocab)} tokens / logits {t_size}, "
            f"student tokenizer {len(s_vocab)} tokens / logits {s_size}). Logit distillation needs the same token "
            "ids: pick a teacher from the student's model family, or pass --cross-tokenizer.")


SHARD = 256  # examples per teacher-cache shard


class TeacherCache:
    """Top-k teacher log-probs per (example, variant): variant 0 is the original, 1 + j its counterfactual j.
    Stored as safetensors shards of SHARD examples under OUTPUT/teacher_cache, read lazily (memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.handles = folder, {}

    def get(self, index: int, variant: int):
        from safetensors import safe_open

        shard = index // SHARD
        if shard not in self.handles:
            self.handles[shard] = safe_open(str(self.folder / f"shard-{shard:05d}.safetensors"), "pt")
        handle = self.handles[shard]
        return handle.get_tensor(f"{index}.{variant}.logp"), handle.get_tensor(f"{index}.{variant}.ids").long()

    def batch(self, keys: list[tuple[int, int]]):
        """(N, k) log-probs and ids of the selected positions of several rows, in row-major order."""
        import torch

        pairs = [self.get(i, v) for i, v in keys]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    @staticmethod
    def meta(config: DistillConfig, examples: list[Example], fingerprint: dict, vocab: int) -> dict:
        return {"k": config.top_k, "temperature": config.temperature, "vocab": vocab, "examples": len(examples),
                "data": fingerprint}

    @staticmethod
    def complete(folder: Path, meta: dict) -> bool:
        """Whether the folder holds a finished cache of exactly this data and these settings."""
        path = folder / "meta.json"
        if not path.exists():
            return False
        if json.loads(path.read_text()) != meta:
            raise LeafError(f"{folder} holds a teacher cache for other data or settings; delete it or use "
                            "another --output.")
        return True

    @staticmethod
    def write(folder: Path, teacher, examples: list[Example], config: DistillConfig, vocab: int, *, rank: int = 0,
              processes: int = 1) -> None:
        """Run the teacher once over every original and counterfactual, this process's share of the shards
        (shard s goes to process s mod N); resumable shard by shard. The main process writes meta.json once every
        process finished (see finish)."""
        import torch

        from leaf.io import save_safetensors_atomic
        from leaf.distill.losses import logit_mask, teacher_topk

        folder.mkdir(parents=True, exist_ok=True)
        hf = teacher.hf_model.eval()
        for shard in range(0, len(examples), SHARD):
            path = folder / f"shard-{shard // SHARD:05d}.safetensors"
            if (shard // SHARD) % processes != rank or path.exists():
                continue
            tensors = {}
            for i in range(shard, min(shard + SHARD, len(examples))):
                ex = examples[i]
                for v, (ids, mask) in enumerate([(ex.input_ids, ex.response_mask), *ex.counterfactuals]):
                    selected = logit_mask(torch.tensor([mask], device=teacher.device))        # (1, T)
                    keep = selected.any(0).nonzero().flatten()
                    with torch.no_grad():  # the LM head only where the loss reads the teacher
                        logits = hf(input_ids=torch.tensor([ids], device=teacher.device), logits_to_keep=keep).logits
                    logp, top = teacher_topk(logits, selected[:, keep], config.top_k,
                                             temperature=config.temperature, vocab=vocab)
                    tensors[f"{i}.{v}.logp"] = logp.cpu().contiguous()
                    tensors[f"{i}.{v}.ids"] = top.to(torch.int32).cpu().contiguous()
            save_safetensors_atomic(path, tensors)

    @staticmethod
    def finish(folder: Path, meta: dict) -> None:
        missing = [k for k in range(0, meta["examples"], SHARD)
                   if not (folder / f"shard-{k // SHARD:05d}.safetensors").exists()]
        if missing:
            raise LeafError(f"The teacher cache in {folder} lacks {len(missing)} shard(s); rerun with --resume.")
        write_json_atomic(folder / "meta.json", meta)


def run_distill(config: DistillConfig, *, progress: bool = True) -> dict:
    """Train the student; returns a summary (final path, steps, last losses)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from leaf.hooks import load_model
    from leaf.hooks.reductions import mean_nll_at
    from leaf.distill.losses import (get_divergence, hybrid_loss, kd_loss, kd_loss_from_cache, lambda_at, logit_mask,
                             per_sample_mean)

    from accelerate import PartialState

    # under `accelerate launch` every process runs this function: all check, only the main process writes
    ranks = PartialState(cpu=config.device == "cpu")
    main = ranks.is_main_process
    out = config.output
    checkpoints = out / "checkpoints"
    manifest = out / "leaf_distill.json"
    last, partial = last_complete_checkpoint(checkpoints)
    if manifest.exists():
        started = last is not None or partial or (out / "log.jsonl").exists()
        if started and not config.resume:  # a --cache-only run leaves only the manifest and the cache: go on
            raise LeafError(f"{out} already holds a distill run. Pass --resume to continue it, or choose another "
                            "--output (nothing was overwritten).")
        check_same_settings(out, manifest, config.fingerprint())
        if main:  # a kill while the Trainer wrote a checkpoint leaves it without trainer_state.json (written last)
            for folder in partial:
                shutil.rmtree(folder)
    elif out.exists() and any(out.iterdir()):
        raise LeafError(f"{out} exists and is not empty. Choose a new --output (nothing was overwritten).")

    records, identical = load_records_for(config)
    if not config.cross_tokenizer and not (config.cache_teacher and (out / "teacher_cache" / "meta.json").exists()):
        check_vocabularies_before_loading(config)
    def say(message: str) -> None:  # stage lines on stderr; stdout carries only the JSON summary
        if progress and main:
            print(message, file=sys.stderr, flush=True)

    say(f"{len(records)} samples from {config.data}; loading the student {config.student}")
    student = load_model(config.student, device=config.device, dtype="float32", allow_pickle=config.allow_pickle,
                         trust_remote_code=config.trust_remote_code)
    vocab = student.hf_model.get_output_embeddings().weight.shape[0]
    teacher = None
    if config.cross_tokenizer:  # the teacher's own encoding is part of every example
        say(f"loading the teacher {config.teacher}")
        teacher = load_model(config.teacher, device=config.device, dtype=config.dtype,
                             allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                             device_map=config.teacher_device_map)
    examples, dropped = build_examples(records, student.tokenizer, config.mode,
                                       config.max_length or student.max_length,
                                       teacher_tokenizer=teacher.tokenizer if teacher else None,
                                       teacher_max_length=teacher.max_length if teacher else None)
    if not examples:
        raise LeafError(f"No sample of {config.data} fits (all {dropped} longer than the context).")
    with_cf = sum(bool(e.counterfactuals) for e in examples)
    if config.mode != "kd" and with_cf == 0:
        raise LeafError(f"--mode {config.mode} but no sample in {config.data} has a counterfactual of that level. "
                        "Use --mode kd, or analyze with another threshold / --level both.")
    cache_dir = out / "teacher_cache"
    cache_meta = TeacherCache.meta(config, examples, config.fingerprint(), vocab)
    cached = config.cache_teacher and TeacherCache.complete(cache_dir, cache_meta)
    if not cached and teacher is None:  # the teacher in the run's dtype (bf16 halves a big teacher); never trained
        if config.teacher_device_map and ranks.num_processes > 1:
            raise LeafError("--teacher-device-map spreads the teacher over every GPU, so it needs one process: "
                            "write the cache first (`leaf distill ... --cache-only --teacher-device-map auto`), then "
                            "train under accelerate launch on the same --output.")
        say(f"loading the teacher {config.teacher}")
        teacher = load_model(config.teacher, device=config.device, dtype=config.dtype,
                             allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                             device_map=config.teacher_device_map)
        check_vocabularies(teacher, student)
    matched = None
    if config.cross_tokenizer:
        from leaf.distill.cross_tokenizer import end_of_turn_id, vocabulary_map

        matched = vocabulary_map(teacher.tokenizer, student.tokenizer,
                                 pairs=[(end_of_turn_id(teacher.tokenizer), end_of_turn_id(student.tokenizer))])
    ranks.wait_for_everyone()  # every process has checked the folder before the main one claims it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, config.fingerprint())

    divergence = get_divergence(config.divergence, config.beta)
    cache = None
    if config.cache_teacher:
        if not cached:
            TeacherCache.write(cache_dir, teacher, examples, config, vocab, rank=ranks.process_index,
                               processes=ranks.num_processes)
            ranks.wait_for_everyone()
            if main:
                TeacherCache.finish(cache_dir, cache_meta)
            ranks.wait_for_everyone()
        cache = TeacherCache(cache_dir)
        teacher = None  # training from the cache: the teacher leaves memory
        hf_teacher = None
        if config.cache_only:
            summary = {"teacher_cache": str(cache_dir), "samples": len(examples), "with_counterfactual": with_cf,
                       "processes": ranks.num_processes, "rank": ranks.process_index,
                       "next": "train from it: the same command without --cache-only (any number of processes)"}
            if main:
                write_json_atomic(cache_dir / "summary.json", summary)
            return summary
    else:
        hf_teacher = teacher.hf_model.eval()
        for p in hf_teacher.parameters():
            p.requires_grad_(False)
    terms: list[dict] = []

    class DistillTrainer(Trainer):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            """The student's weights from a checkpoint through from_pretrained, which applies the key renames
            transformers makes on load (GPT-NeoX's embed_out -> lm_head, ...); the Trainer's own loader reads the
            file's keys as saved and silently skips a renamed one. Every key must match: a missing or unexpected
            one is an error, never a warning. FSDP / DeepSpeed checkpoints keep the Trainer's loader."""
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            lam = lambda_at(config.lam, self.state.global_step, self.state.max_steps)
            kd = dict(divergence=divergence, temperature=config.temperature, chunk_size=config.chunk_size)

            def student(ids, attention, response):
                """The student's logits at the positions the loss reads (logits_to_keep: the LM head never runs
                on the prompt), with the logit mask over those positions: ((B, U, V), (B, U), (U,))."""
                selected = logit_mask(response)
                keep = selected.any(0).nonzero().flatten()
                logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits
                return logits, selected[:, keep], keep

            def term(s_logits, mask, keep, ids, attention, keys):
                """Per-sample D(p_T || p_S) for one set of rows, the teacher online or from the cache."""
                if cache is not None:
                    logp, top = cache.batch(keys)
                    return kd_loss_from_cache(s_logits, mask, logp.to(s_logits.device), top.to(s_logits.device),
                                              **kd)
                if config.teacher_device_map is None and next(hf_teacher.parameters()).device != ids.device:
                    hf_teacher.to(ids.device)
                with torch.no_grad():
                    t_logits = hf_teacher(input_ids=ids, attention_mask=attention,
                                          logits_to_keep=keep.to(ids.device)).logits.to(s_logits.device)
                return kd_loss(s_logits, t_logits, mask, **kd)

            index = inputs["index"].tolist()
            counterfactual = None
            if matched is not None:  # --cross-tokenizer: the teacher reads its own tokens
                from leaf.distill.cross_tokenizer import batch_term

                device = inputs["input_ids"].device
                if config.teacher_device_map is None and next(hf_teacher.parameters()).device != device:
                    hf_teacher.to(device)

                def s_forward(ids, attention, keep):
                    return model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits

                def t_forward(ids, attention, keep):
                    with torch.no_grad():
                        return hf_teacher(input_ids=ids, attention_mask=attention,
                                          logits_to_keep=keep).logits.to(device)

                cross = dict(t_matched=matched[0].to(device), s_matched=matched[1].to(device), divergence=divergence,
                             temperature=config.temperature, uld_weight=config.uld_weight)
                original = batch_term(s_forward, t_forward, inputs, "", inputs["input_ids"],
                                      inputs["attention_mask"], len(index), **cross)                       # (B,)
                if "cf_index" in inputs and lam < 1:
                    per_row = batch_term(s_forward, t_forward, inputs, "cf_", inputs["cf_input_ids"],
                                         inputs["cf_attention_mask"], len(inputs["cf_index"]), **cross)   # (R,)
                    counterfactual = per_sample_mean(per_row, inputs["cf_index"], len(index))
            else:
                s_logits, s_mask, s_keep = student(inputs["input_ids"], inputs["attention_mask"],
                                                   inputs["response_mask"])
                original = term(s_logits, s_mask, s_keep, inputs["input_ids"], inputs["attention_mask"],
                                [(i, 0) for i in index])                                               # (B,)
                if "cf_index" in inputs and lam < 1:
                    cf_logits, cf_mask, cf_keep = student(inputs["cf_input_ids"], inputs["cf_attention_mask"],
                                                          inputs["cf_response_mask"])
                    keys = [(index[r], 1 + j) for r, j in zip(inputs["cf_index"].tolist(),
                                                              inputs["cf_choice"].tolist())]
                    per_row = term(cf_logits, cf_mask, cf_keep, inputs["cf_input_ids"], inputs["cf_attention_mask"],
                                   keys)                                                               # (R,)
                    # a sample with an instruction- and a response-level counterfactual: the mean of the two
                    counterfactual = per_sample_mean(per_row, inputs["cf_index"], len(index))
            has_cf = torch.zeros_like(original, dtype=torch.bool)
            if counterfactual is None:
                counterfactual = torch.zeros_like(original)
            else:
                has_cf[inputs["cf_index"]] = True
            loss = hybrid_loss(original, counterfactual, has_cf, lam)
            if config.ce_weight:
                if matched is not None:  # (the cross-tokenizer path ran the student on the aligned positions only)
                    s_logits, _, s_keep = student(inputs["input_ids"], inputs["attention_mask"],
                                                  inputs["response_mask"])
                loss = loss + config.ce_weight * mean_nll_at(s_logits, inputs["input_ids"], inputs["response_mask"],
                                                             s_keep).mean()
            terms.append({"lambda": lam, "kd_original": float(original.detach().mean()),
                          "kd_counterfactual": float(counterfactual.detach()[has_cf].mean()) if has_cf.any() else None,
                          "tokens": int(inputs["attention_mask"].sum()) + (  # the forward passes that ran
                              int(inputs["cf_attention_mask"].sum()) if "cf_index" in inputs and lam < 1 else 0)})
            return loss

    log_path = out / "log.jsonl"

    class JsonlLog(TrainerCallback):
        def __init__(self):
            import time

            self.clock, self.last = time.perf_counter, time.perf_counter()
            self.board = tensorboard_writer(out / "tensorboard") if main else None

        def on_step_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:  # the log holds the main process's terms
                terms.clear()
                return
            now = self.clock()
            window, terms[:] = terms[:], []
            cf = [t["kd_counterfactual"] for t in window if t["kd_counterfactual"] is not None]
            line = {"step": state.global_step, "lambda": window[-1]["lambda"] if window else None,
                    "kd_original": sum(t["kd_original"] for t in window) / max(len(window), 1),
                    "kd_counterfactual": sum(cf) / len(cf) if cf else None,
                    "lr": kwargs["lr_scheduler"].get_last_lr()[0] if kwargs.get("lr_scheduler") else None,
                    "tokens": sum(t["tokens"] for t in window),
                    "tokens_per_second": sum(t["tokens"] for t in window) / max(now - self.last, 1e-9),
                    "step_seconds": now - self.last}
            self.last = now
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
                handle.flush()
            if self.board is not None:
                for key, value in line.items():
                    if key != "step" and value is not None:
                        self.board.add_scalar(f"leaf/{key}", value, state.global_step)
            every = config.logging_steps
            if every and (state.global_step % every == 0 or state.global_step == state.max_steps):
                print_progress_line(line, state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            if self.board is not None:
                self.board.close()

    if main and last and log_path.exists():  # drop log lines past the checkpoint we resume from
        step = int(Path(last).name.split("-")[-1])
        kept = [line for line in log_path.read_text().splitlines() if _logged_step(line) <= step]
        write_text_atomic(log_path, "".join(line + "\n" for line in kept))
    elif main and log_path.exists():
        log_path.unlink()

    args = TrainingArguments(
        output_dir=str(checkpoints), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, lr_scheduler_type="cosine",
        warmup_steps=config.warmup, weight_decay=0.0, optim="adamw_torch", seed=config.seed,
        data_seed=config.seed, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        logging_strategy="no", report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=config.device == "cpu", bf16=config.dtype in ("bfloat16", "bf16"),
        gradient_checkpointing=config.gradient_checkpointing, disable_tqdm=not progress)
    trainer = DistillTrainer(model=student.hf_model, args=args, train_dataset=PairedData(examples, config.seed),
                             data_collator=make_collator(student.pad_token_id,
                                                         teacher.pad_token_id if teacher is not None else None),
                             callbacks=[JsonlLog()])
    if progress:  # the bar on stderr; its on_log printed the Trainer's final dict to stdout, which carries only JSON
        from transformers.trainer_callback import ProgressCallback

        class BarOnly(ProgressCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                pass

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly())
    say(f"training {config.max_steps} steps on {len(examples)} samples ({with_cf} with counterfactuals), "
        f"mode {config.mode}" + (f", resuming from {Path(last).name}" if config.resume and last else ""))
    trainer.train(resume_from_checkpoint=last if config.resume and last else None)
    final = out / "final"
    trainer.save_model(str(final))
    ranks.wait_for_everyone()
    if not main:
        return {"final": str(final), "steps": trainer.state.global_step, "samples": len(examples),
                "with_counterfactual": with_cf, "last": None, "rank": ranks.process_index}
    student.tokenizer.save_pretrained(str(final))
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    summary = {"final": str(final), "steps": trainer.state.global_step, "samples": len(examples),
               "with_counterfactual": with_cf, "dropped_too_long": dropped,
               "identical_counterfactuals_dropped": identical, "processes": ranks.num_processes,
               "distributed": str(ranks.distributed_type).split(".")[-1], "last": log[-1] if log else None,
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}
    write_json_atomic(out / "summary.json", summary)
    return summary
