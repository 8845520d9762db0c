"""What `leaf distill` writes while it trains: OUTPUT/log.jsonl (one line per optimizer step), TensorBoard curves
when tensorboard is installed, a human line on stderr every --logging-steps, and the progress bar (stdout carries
only the final JSON summary).

A log.jsonl line: step, lambda, kd_original, kd_counterfactual (null without counterfactuals), lr, tokens,
tokens_per_second, step_seconds; the terms are averaged over the step's forward/backward passes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from leaf.distill.step import StepTerms
from leaf.io import write_text_atomic


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; a line cut short by a kill counts as past every checkpoint (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


def trim_log(path: Path, checkpoint: str | None) -> None:
    """Start the log afresh, or on resuming from `checkpoint` keep only the lines up to its step (the steps after it
    run again)."""
    if checkpoint and path.exists():
        step = int(Path(checkpoint).name.split("-")[-1])
        kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    elif path.exists():
        path.unlink()


def tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed (pip install tensorboard), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


def print_progress_line(line: dict, max_steps: int) -> None:
    """One human line per --logging-steps on stderr, above the progress bar (stdout stays machine-readable)."""
    from tqdm import tqdm

    cf = line["kd_counterfactual"]
    text = (f"step {line['step']}/{max_steps}  kd_original {line['kd_original']:.4f}"
            + (f"  kd_counterfactual {cf:.4f}" if cf is not None else "")
            + (f"  λ {line['lambda']:.2f}" if line["lambda"] is not None else "")
            + (f"  lr {line['lr']:.2e}" if line["lr"] is not None else "")
            + f"  {line['tokens_per_second']:.0f} tok/s")
    tqdm.write(text, file=sys.stderr)


def log_line(step: int, window: list[StepTerms], lr: float | None, seconds: float) -> dict:
    """The log.jsonl line of one optimizer step from the terms of its forward/backward passes."""
    cf = [t.kd_counterfactual for t in window if t.kd_counterfactual is not None]
    tokens = sum(t.tokens for t in window)
    return {"step": step, "lambda": window[-1].lam if window else None,
            "kd_original": sum(t.kd_original for t in window) / max(len(window), 1),
            "kd_counterfactual": sum(cf) / len(cf) if cf else None,
            "lr": lr, "tokens": tokens, "tokens_per_second": tokens / max(seconds, 1e-9), "step_seconds": seconds}


class JsonlLog(TrainerCallback):
    """Per optimizer step: drain `terms` (what DistillTrainer.compute_loss appended since the last step) into one
    log.jsonl line, TensorBoard scalars and, every `logging_steps` (and at the last step), a line on stderr. Only
    the main process writes; the others just drain."""

    def __init__(self, path: Path, terms: list[StepTerms], *, logging_steps: int, board: Path | None) -> None:
        self.path, self.terms, self.logging_steps = path, terms, logging_steps
        self.clock, self.last = time.perf_counter, time.perf_counter()
        self.board = tensorboard_writer(board) if board is not None else None

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # the log holds the main process's terms
            self.terms.clear()
            return
        now = self.clock()
        window, self.terms[:] = self.terms[:], []
        scheduler = kwargs.get("lr_scheduler")
        line = log_line(state.global_step, window, scheduler.get_last_lr()[0] if scheduler else None,
                        now - self.last)
        self.last = now
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
        if self.board is not None:
            for key, value in line.items():
                if key != "step" and value is not None:
                    self.board.add_scalar(f"leaf/{key}", value, state.global_step)
        every = self.logging_steps
        if every and (state.global_step % every == 0 or state.global_step == state.max_steps):
            print_progress_line(line, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self.board is not None:
            self.board.close()


class BarOnly(ProgressCallback):
    """The Trainer's progress bar (on stderr) without its on_log, which printed the Trainer's final dict to
    stdout, which carries only JSON."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass
