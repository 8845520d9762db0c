"""`leaf distill`: causal attention distillation on original and counterfactual inputs (stage 2).

    leaf distill --teacher T --student S --data runs/analyze --output runs/distill --mode instr+resp \\
        --lambda-schedule linear:0.8:0.5 --max-steps 200

Per step, over response positions only: λ·D(p_T(·|X) || p_S(·|X)) + (1-λ)·D(p_T(·|X\\A) || p_S(·|X\\A)), each original
paired with one counterfactual per level it has (instruction, response; the second term is then their mean), every
counterfactual used in turn over the original's appearances; samples without one use the first term alone. Built on
the transformers Trainer (custom loss): AdamW, cosine schedule with warmup, steps or epochs, gradient accumulation,
bf16, gradient checkpointing, checkpoints and `--resume`, a held-out evaluation (--eval-data), the curves through its
report_to integrations, LoRA through peft (--lora-r); under `accelerate launch` the same command runs
DDP/FSDP/DeepSpeed.

run_distill goes: check the output folder -> read the data -> load the models -> build the examples -> (write the
teacher cache) -> train -> summarise. The parts: config.py (DistillConfig), data.py (examples, pairing, batches),
step.py (the loss of one batch, no Trainer), losses.py and cross_tokenizer.py (the math), trainer.py
(DistillTrainer: the loss, the held-out evaluation, leaf's terms in the Trainer's logs), teacher_cache.py, log.py
(log.jsonl, console), checkpoints.py (resuming, LoRA, final/).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from leaf.distill.checkpoints import last_complete_checkpoint
from leaf.distill.config import MODES, DistillConfig
from leaf.distill.data import Example, PairedData, build_examples, make_collator, read_analyze_output, read_dataset
from leaf.distill.teacher_cache import TeacherCache
from leaf.errors import LeafError
from leaf.io import full_disk_as_oserror, write_json_atomic
from leaf.records import is_samples_file
from leaf.run_folder import FolderLock, check_run_folder

__all__ = ["MODES", "DistillConfig", "run_distill"]


def run_distill(config: DistillConfig, *, progress: bool = True) -> dict:
    """Train the student; returns a summary (final path, steps, last losses). The main process holds the output
    folder's lock (leaf.run_folder.FolderLock) from the first look at an existing folder, or from the claim of a
    new one, to the end: a second run on it is refused, naming this one's PID."""
    from accelerate import PartialState

    # under `accelerate launch` every process runs this function: all check, only the main process writes
    ranks = PartialState(cpu=config.device == "cpu")
    say = partial(_say, progress and ranks.is_main_process)
    for flag, path in (("--data", config.data), ("--counterfactuals", config.counterfactuals),
                       ("--eval-data", config.eval_data)):
        if path is not None and not path.exists():  # before the settings' fingerprint reads the data's digest
            raise LeafError(f"{flag} {str(path)!r} does not exist.")
    lock = FolderLock(config.output, "distill")
    try:
        return _run(config, ranks, say, lock, progress)
    finally:
        lock.release()


def _run(config: DistillConfig, ranks, say, lock: FolderLock, progress: bool) -> dict:
    from leaf.distill.log import trim_log

    out = config.output
    if ranks.is_main_process and (not out.exists() or (out / "leaf_distill.json").exists() or not any(out.iterdir())):
        lock.acquire()  # before any model loads: no second run on this folder (a folder of other files is refused next)
    last = check_output(config, main=ranks.is_main_process)
    records, identical = load_records_for(config)
    held_out = load_records_for(config, held_out=True)[0] if config.eval_data is not None else None
    student, teacher = load_models(config, say, records=len(records))
    data = training_set(config, records, identical, student, teacher)
    evaluation = held_out_set(config, held_out, student, teacher) if held_out is not None else None
    vocab = student.hf_model.get_output_embeddings().weight.shape[0]
    cache_meta = TeacherCache.meta(config, data.examples, config.fingerprint(), vocab)
    cached = config.cache_teacher and TeacherCache.complete(config.output / "teacher_cache", cache_meta)
    if not cached and teacher is None and config.teacher_engine == "hf":
        teacher = load_online_teacher(config, say, student, processes=ranks.num_processes)
    matched = matched_vocabulary(teacher, student) if config.cross_tokenizer else None
    last = claim_output(config, ranks, lock, last)
    if config.cache_teacher:
        source = teacher_cache(config, teacher, data.examples, vocab, cache_meta, write=not cached, ranks=ranks,
                               say=say, progress=progress)
        teacher = None  # training from the cache: the teacher leaves memory
        if config.cache_only:
            return cache_summary(config, data, ranks)
    else:
        source = frozen(teacher.hf_model)
    if ranks.is_main_process:  # a resumed run drops the log lines past its checkpoint; a new one starts afresh
        trim_log(config.output / "log.jsonl", last)
    trainer, final = train(config, student, source, matched, data, ranks, last=last, progress=progress, say=say,
                           pad_ids=(student.pad_token_id, teacher.pad_token_id if teacher is not None else None),
                           evaluation=evaluation)
    return summarise(config, trainer, student, data, ranks, final)


@dataclass
class TrainingSet:
    """The examples a run trains on, and what reading and tokenizing the data dropped."""

    examples: list[Example]
    with_counterfactual: int
    dropped_too_long: int
    identical_dropped: int


def _say(enabled: bool, message: str) -> None:
    """A stage line on stderr; stdout carries only the JSON summary."""
    if enabled:
        print(message, file=sys.stderr, flush=True)


def check_output(config: DistillConfig, *, main: bool) -> str | None:
    """Refuse an output folder that holds something else, or a started run without --resume (or with other
    settings); remove the checkpoints a kill left half-written. Returns the checkpoint to resume from, if any."""
    out = config.output
    last, half_written = last_complete_checkpoint(out / "checkpoints")
    # a --cache-only run leaves only the manifest and the cache: going on from there needs no --resume
    started = last is not None or bool(half_written) or (out / "log.jsonl").exists()
    ours = check_run_folder(out, out / "leaf_distill.json", config.fingerprint(), resume=config.resume,
                            what="a distill", needs_resume=started, ignore=(out / ".lock",))
    if ours and main:  # a kill while the Trainer saved a checkpoint leaves it without trainer_state.json (saved last)
        for folder in half_written:
            shutil.rmtree(folder)
    return last


def claim_output(config: DistillConfig, ranks, lock: FolderLock, last: str | None) -> str | None:
    """Once every process has checked the folder (and the models loaded), the main process takes the folder's lock,
    checks it again (another run may have claimed it meanwhile) and writes the run's settings (leaf_distill.json,
    which --resume compares). Returns the checkpoint to resume from, as found now."""
    ranks.wait_for_everyone()
    if ranks.is_main_process:
        config.output.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        last = check_output(config, main=True)
        write_json_atomic(config.output / "leaf_distill.json", config.fingerprint())
    ranks.wait_for_everyone()
    return last


def load_records_for(config: DistillConfig, *, held_out: bool = False) -> tuple[list[dict], int]:
    """Originals with counterfactuals, from an analyze output or a dataset + counterfactual file; and the number of
    counterfactual rows dropped as identical to their original. held_out: --eval-data instead of --data, read the
    same way but without --counterfactuals (a plain dataset there is scored on its originals only)."""
    data = config.eval_data if held_out else config.data
    counterfactuals = None if held_out else config.counterfactuals
    if counterfactuals is None and is_samples_file(data):
        return read_analyze_output(data), 0
    if counterfactuals is not None and is_samples_file(data):
        raise LeafError(f"{data} is a `leaf analyze` output, which holds its own counterfactuals; drop "
                        "--counterfactuals, or pass the plain dataset as --data.")
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if data.is_dir() and not any((data / name).exists() for name in saved):
        raise LeafError(f"{str(data)!r} is neither a `leaf analyze` output (no samples.jsonl) nor a dataset "
                        "saved with save_to_disk. Run leaf analyze first and pass its output folder, or pass a "
                        "dataset file with --counterfactuals FILE.")
    if counterfactuals is None and config.mode != "kd" and not held_out:
        raise LeafError(f"{data} is a plain dataset without counterfactuals, so --mode {config.mode} has "
                        "nothing to prune: pass --counterfactuals FILE, run leaf analyze on it first, or use "
                        "--mode kd.")
    return read_dataset(data, counterfactuals, prompt_field=config.prompt_field,
                        response_field=config.response_field, id_field=config.id_field)


def load_models(config: DistillConfig, say, *, records: int):
    """The student (float32: the optimizer's weights) and, with --cross-tokenizer, the teacher, whose own encoding
    is part of every example (otherwise None: it loads once the cache is known to be needed). Checks the
    vocabularies on the tokenizers first, so that a mismatched pair fails before any model loads."""
    from leaf.hooks import load_model

    if not config.cross_tokenizer and not (config.cache_teacher
                                           and (config.output / "teacher_cache" / "meta.json").exists()):
        check_vocabularies_before_loading(config)
    say(f"{records} samples from {config.data}; loading the student {config.student}")
    student = load_model(config.student, device=config.device, dtype="float32", allow_pickle=config.allow_pickle,
                         trust_remote_code=config.trust_remote_code)
    return student, load_teacher(config, say) if config.cross_tokenizer else None


def load_teacher(config: DistillConfig, say):
    """The teacher in the run's dtype (bf16 halves a big teacher), spread by --teacher-device-map if given."""
    from leaf.distill.sharding import real_weights_on_every_rank
    from leaf.hooks import load_model

    say(f"loading the teacher {config.teacher}")
    with real_weights_on_every_rank():  # FSDP's efficient loading would give ranks > 0 a teacher of zeros
        return load_model(config.teacher, device=config.device, dtype=config.dtype,
                          allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                          device_map=config.teacher_device_map)


def load_online_teacher(config: DistillConfig, say, student, *, processes: int):
    """The teacher for a run that reads it (online, or to write the cache), checked against the student."""
    if config.teacher_device_map and processes > 1:
        raise LeafError("--teacher-device-map spreads the teacher over every GPU, so it needs one process: "
                        "write the cache first (`leaf distill ... --cache-only --teacher-device-map auto`), then "
                        "train under accelerate launch on the same --output.")
    teacher = load_teacher(config, say)
    check_vocabularies(teacher, student)
    return teacher


def check_vocabularies_before_loading(config: DistillConfig) -> None:
    """The vocabulary check on tokenizers and configs alone, so that a mismatched pair fails in seconds instead of
    after both models load (the check on the loaded models, check_vocabularies, still runs)."""
    from transformers import AutoConfig

    from leaf.hooks.loading import load_tokenizer, resolve_source

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


def matched_vocabulary(teacher, student):
    """--cross-tokenizer: the (teacher ids, student ids) of the entries both spell the same, end-of-turn paired."""
    from leaf.distill.cross_tokenizer import end_of_turn_id, vocabulary_map

    return vocabulary_map(teacher.tokenizer, student.tokenizer,
                          pairs=[(end_of_turn_id(teacher.tokenizer), end_of_turn_id(student.tokenizer))])


def training_set(config: DistillConfig, records: list[dict], identical: int, student, teacher) -> TrainingSet:
    """Render and tokenize the records for the student (and, with --cross-tokenizer, the teacher); LeafError when
    nothing fits or the mode finds no counterfactual."""
    examples, dropped = fitting_examples(config, records, student, teacher, what=str(config.data))
    with_cf = sum(bool(e.counterfactuals) for e in examples)
    if config.mode != "kd" and with_cf == 0:
        raise LeafError(f"--mode {config.mode} but no sample in {config.data} has a counterfactual of that level. "
                        "Use --mode kd, or analyze with another threshold / --level both.")
    return TrainingSet(examples, with_cf, dropped, identical)


def held_out_set(config: DistillConfig, records: list[dict], student, teacher) -> list[dict]:
    """The --eval-data batches' items: each held-out original once, with the first counterfactual of each level
    the mode allows (PairedData's first round, fixed by --seed)."""
    examples, _ = fitting_examples(config, records, student, teacher, what=f"--eval-data {config.eval_data}",
                                   held_out=True)
    paired = PairedData(examples, config.seed)
    return [paired[i] for i in range(len(examples))]


def analyze_template(config: DistillConfig, *, held_out: bool = False):
    """The template analyze rendered --data (or --eval-data) with, when it is an analyze folder; else None."""
    from leaf.records import SUMMARY, is_samples_file
    from leaf.rendering import recorded_template

    data = config.eval_data if held_out else config.data
    if data is None or not is_samples_file(data):
        return None  # a plain dataset: the student's own rendering
    summary_file = (data if data.is_dir() else data.parent) / SUMMARY
    if not summary_file.exists():
        return None  # a samples file on its own: the student's own rendering
    # reading the records checked the folder finished (summary.json matches samples.jsonl): not hashed again here
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return recorded_template(summary, trust_remote_code=config.trust_remote_code)


def fitting_examples(config: DistillConfig, records: list[dict], student, teacher, *, what: str,
                     held_out: bool = False):
    """build_examples for the run's models and --max-length, and how many samples were too long; LeafError when
    none fits."""
    examples, dropped = build_examples(records, student.tokenizer, config.mode,
                                       config.max_length or student.max_length,
                                       teacher_tokenizer=teacher.tokenizer if teacher else None,
                                       teacher_max_length=teacher.max_length if teacher else None,
                                       template=analyze_template(config, held_out=held_out),
                                       what=what)
    if not examples:
        raise LeafError(f"No sample of {what} fits (all {dropped} longer than the context).")
    return examples, dropped


def teacher_cache(config: DistillConfig, teacher, examples: list[Example], vocab: int, meta: dict, *, write: bool,
                  ranks, say, progress: bool = False) -> TeacherCache:
    """The teacher cache under OUTPUT/teacher_cache, written first (each process its shards) unless complete, by
    the loaded HF teacher or, with --teacher-engine vllm, by a vLLM engine started here and closed after."""
    from leaf.serve.engines import HFEngine

    folder = config.output / "teacher_cache"
    if write:
        engine = HFEngine(teacher) if teacher is not None else vllm_teacher(config, examples, ranks, say)
        try:
            TeacherCache.write(folder, engine, examples, config, vocab, rank=ranks.process_index,
                               processes=ranks.num_processes, progress=progress and ranks.is_main_process)
        finally:
            engine.close()
        ranks.wait_for_everyone()
        if ranks.is_main_process:
            TeacherCache.finish(folder, meta)
        ranks.wait_for_everyone()
    return TeacherCache(folder)


def vllm_teacher(config: DistillConfig, examples: list[Example], ranks, say):
    """--teacher-engine vllm: the teacher in vLLM (one process; --teacher-tensor-parallel-size GPUs), its context
    the longest sequence, returning --top-k log-probs per position. On a GPU it takes
    SHARED_GPU_MEMORY_UTILIZATION of the memory: the student is loaded beside it."""
    from leaf.serve.engines import SHARED_GPU_MEMORY_UTILIZATION, VLLMEngine

    if ranks.num_processes > 1:
        raise LeafError("--teacher-engine vllm writes the teacher cache in one process (vLLM spreads the teacher "
                        "itself, --teacher-tensor-parallel-size): run `leaf distill ... --cache-only "
                        "--teacher-engine vllm` alone first, then train under accelerate launch on the same --output.")
    from transformers import AutoConfig

    from leaf.hooks.loading import context_length, resolve_source

    longest = max(len(ids) for ex in examples for ids, _ in [(ex.input_ids, None), *ex.counterfactuals])
    context = context_length(AutoConfig.from_pretrained(resolve_source(config.teacher),
                                                        trust_remote_code=config.trust_remote_code))
    say(f"starting vLLM for the teacher {config.teacher} (top {config.top_k} log-probs per position)")
    return VLLMEngine(config.teacher, device=config.device, dtype=config.dtype, seed=config.seed,
                      max_model_len=longest + 1 if context is None or longest < context else None,
                      tensor_parallel_size=config.teacher_tensor_parallel_size,
                      gpu_memory_utilization=SHARED_GPU_MEMORY_UTILIZATION, allow_pickle=config.allow_pickle,
                      trust_remote_code=config.trust_remote_code,
                      engine_args={"max_logprobs": config.top_k})


def cache_summary(config: DistillConfig, data: TrainingSet, ranks) -> dict:
    """The report of a --cache-only run (the main process also writes it to teacher_cache/summary.json)."""
    folder = config.output / "teacher_cache"
    summary = {"teacher_cache": str(folder), "samples": len(data.examples),
               "with_counterfactual": data.with_counterfactual, "processes": ranks.num_processes,
               "rank": ranks.process_index,
               "next": "train from it: the same command without --cache-only (any number of processes)"}
    if ranks.is_main_process:
        write_json_atomic(folder / "summary.json", summary)
    return summary


def frozen(model):
    """The online teacher in eval mode with no gradients: never trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def training_arguments(config: DistillConfig, *, progress: bool, evaluate: bool = False,
                       configured_state: bool = False):
    """The Trainer's settings; leaf's option names and their TrainingArguments names are tabled in docs/distill.md.
    configured_state: keep the accelerate state leaf set (FSDP on CPU, leaf.distill.sharding) instead of letting
    the Trainer reset it."""
    from transformers import TrainingArguments

    length = dict(max_steps=config.max_steps) if config.max_steps else dict(num_train_epochs=config.num_train_epochs)
    every = config.logging_steps
    eval_every = config.eval_steps if config.eval_steps is not None else every
    return TrainingArguments(
        output_dir=str(config.output / "checkpoints"), **length,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=config.warmup, weight_decay=0.0,
        optim="adamw_torch", seed=config.seed, data_seed=config.seed, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=2, logging_strategy="steps" if every else "no",
        logging_steps=every or 500, report_to=config.report_to or "none",
        # the last step is evaluated (and logged) by JsonlLog whatever the intervals
        eval_strategy="steps" if evaluate and eval_every else "no", eval_steps=eval_every or None,
        remove_unused_columns=False, dataloader_num_workers=0, use_cpu=config.device == "cpu",
        bf16=config.dtype in ("bfloat16", "bf16"), gradient_checkpointing=config.gradient_checkpointing,
        disable_tqdm=not progress, accelerator_config={"use_configured_state": configured_state})


def train(config: DistillConfig, student, source, matched, data: TrainingSet, ranks, *, last: str | None,
          progress: bool, say, pad_ids: tuple[int, int | None], evaluation: list[dict] | None = None):
    """Run the Trainer (resuming from `last` with --resume; evaluating on `evaluation`, the --eval-data items)
    and save the student to OUTPUT/final; returns the trainer and what save_final says of final/.
    source: the frozen teacher model or the TeacherCache."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from leaf.distill.checkpoints import save_final, with_lora
    from leaf.distill.log import BarOnly, JsonlLog
    from leaf.distill.sharding import fsdp_on_cpu
    from leaf.distill.trainer import DistillTrainer

    out = config.output
    model = student.hf_model
    if config.lora_r:
        model = with_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules,
                          gradient_checkpointing=config.gradient_checkpointing)
    terms, lines = [], []
    configured = fsdp_on_cpu(config.device, ranks.num_processes)
    try:
        trainer = DistillTrainer(
            model=model, args=training_arguments(config, progress=progress, evaluate=evaluation is not None,
                                                 configured_state=configured),
            train_dataset=PairedData(data.examples, config.seed), eval_dataset=evaluation,
            data_collator=make_collator(*pad_ids),
            callbacks=[JsonlLog(out / "log.jsonl", terms, lines, logging_steps=config.logging_steps,
                                evaluate=evaluation is not None)],
            distill=config, teacher=source, terms=terms, lines=lines, matched=matched)
    except RuntimeError as exc:  # an integration's package is missing (transformers' *Callback raise this)
        if "requires" not in str(exc):
            raise
        raise LeafError(f"--report-to {','.join(config.report_to)}: {exc}") from None
    if config.lora_r and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise LeafError("--lora-r is tested with one process and DDP only: merging the adapter into FSDP- or "
                        "ZeRO-3-sharded weights is not supported here; train full-parameter, or use DDP.")
    board_to_output(trainer, out / "tensorboard")
    # the bar on stderr, without the Trainer's final dict on stdout; without the bar, no dict printed either
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)
    if progress:
        trainer.add_callback(BarOnly())
    resume = last if config.resume and last else None
    length = (f"{config.max_steps} steps" if config.max_steps else f"{config.num_train_epochs:g} epoch(s)")
    say(f"training {length} on {len(data.examples)} samples ({data.with_counterfactual} with counterfactuals), "
        f"mode {config.mode}" + (f", LoRA r={config.lora_r}" if config.lora_r else "")
        + (f", resuming from {Path(last).name}" if resume else ""))
    with full_disk_as_oserror(out):  # a full disk while a checkpoint or final/ is saved: the CLI's ENOSPC message
        trainer.train(resume_from_checkpoint=resume)
        return trainer, save_final(trainer, out / "final")


def board_to_output(trainer, folder: Path) -> None:
    """The Trainer's TensorBoard curves into OUTPUT/tensorboard (where leaf always wrote them) instead of its
    default checkpoints/runs/DATE_HOST, unless TENSORBOARD_LOGGING_DIR says otherwise."""
    import os

    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
            callback.logging_dir = str(folder)


def summarise(config: DistillConfig, trainer, student, data: TrainingSet, ranks, final_kind: dict) -> dict:
    """The run's report; the main process also saves the tokenizer beside the final student and writes it to
    OUTPUT/summary.json, with the last training line of log.jsonl (and the last evaluation's)."""
    final = config.output / "final"
    ranks.wait_for_everyone()
    common = {"final": str(final), **final_kind, "steps": trainer.state.global_step, "samples": len(data.examples),
              "with_counterfactual": data.with_counterfactual}
    if not ranks.is_main_process:
        return {**common, "last": None, "rank": ranks.process_index}
    student.tokenizer.save_pretrained(str(final))
    log = [json.loads(line) for line in (config.output / "log.jsonl").read_text().splitlines()]
    steps, evals = [line for line in log if not line.get("eval")], [line for line in log if line.get("eval")]
    summary = {**common, "dropped_too_long": data.dropped_too_long,
               "identical_counterfactuals_dropped": data.identical_dropped, "processes": ranks.num_processes,
               "distributed": str(ranks.distributed_type).split(".")[-1], "last": steps[-1] if steps else None,
               **({"eval": evals[-1]} if evals else {}),
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}
    write_json_atomic(config.output / "summary.json", summary)
    return summary
