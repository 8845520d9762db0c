"""What `leaf distill` writes while it trains: OUTPUT/log.jsonl (one line per optimizer step, one per evaluation),
a human line on stderr every --logging-steps, and the progress bar (stdout carries only the final JSON summary).
The curves reach TensorBoard, wandb, trackio, ... through the Trainer's own report_to integrations: every
--logging-steps its log carries leaf's terms averaged since the last one (`window_means`, DistillTrainer.log).

A log.jsonl line: step, lambda, kd_original, kd_counterfactual (null without counterfactuals), lr, tokens,
tokens_per_second, step_seconds; the terms are averaged over the step's forward/backward passes. An evaluation
line (--eval-data) is marked "eval": true and holds step, eval_loss, eval_kd_original, eval_kd_counterfactual
(null without counterfactuals) and the Trainer's eval timings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm
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


def print_progress_line(line: dict, max_steps: int) -> None:
    """One human line per --logging-steps on stderr, above the progress bar (stdout stays machine-readable)."""
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


def window_means(lines: list[dict]) -> dict:
    """leaf's terms over the log.jsonl lines of the steps since the last report: the means of the two terms
    (kd_counterfactual over the steps that had one, left out when none did), the last λ, and tokens per second."""
    cf = [line["kd_counterfactual"] for line in lines if line["kd_counterfactual"] is not None]
    out = {"kd_original": sum(line["kd_original"] for line in lines) / len(lines),
           "tokens_per_second": sum(line["tokens"] for line in lines) / max(sum(line["step_seconds"]
                                                                                  for line in lines), 1e-9)}
    if cf:
        out["kd_counterfactual"] = sum(cf) / len(cf)
    if lines[-1]["lambda"] is not None:
        out["lambda"] = lines[-1]["lambda"]
    return out


class JsonlLog(TrainerCallback):
    """Per optimizer step: drain `terms` (what DistillTrainer.compute_loss appended since the last step) into one
    log.jsonl line, also appended to `lines` (for the next training log), and every `logging_steps` (and at the
    last step) a line on stderr; the last step is also logged and, with `evaluate`, evaluated. Each evaluation
    adds an eval line. Only the main process writes; the others just drain."""

    def __init__(self, path: Path, terms: list[StepTerms], lines: list[dict], *, logging_steps: int,
                 evaluate: bool = False) -> None:
        self.path, self.terms, self.lines, self.logging_steps = path, terms, lines, logging_steps
        self.evaluate = evaluate
        self.clock, self.last = time.perf_counter, time.perf_counter()

    def _append(self, line: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()

    def on_step_end(self, args, state, control, **kwargs):
        last = state.global_step == state.max_steps
        if last:  # the end is always reported and evaluated, whatever the intervals
            control.should_log = control.should_log or bool(self.logging_steps)
            control.should_evaluate = control.should_evaluate or self.evaluate
        if not state.is_world_process_zero:  # the log holds the main process's terms
            self.terms.clear()
            return
        now = self.clock()
        window, self.terms[:] = self.terms[:], []
        scheduler = kwargs.get("lr_scheduler")
        line = log_line(state.global_step, window, scheduler.get_last_lr()[0] if scheduler else None,
                        now - self.last)
        self.last = now
        self._append(line)
        self.lines.append(line)
        every = self.logging_steps
        if every and (state.global_step % every == 0 or last):
            print_progress_line(line, state.max_steps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or metrics is None:
            return
        line = {"step": state.global_step, "eval": True, "eval_kd_counterfactual": None, **metrics}
        self._append(line)
        if self.logging_steps:
            cf = line["eval_kd_counterfactual"]
            tqdm.write(f"eval at step {state.global_step}  eval_loss {line.get('eval_loss', float('nan')):.4f}  "
                       f"eval_kd_original {line['eval_kd_original']:.4f}"
                       + (f"  eval_kd_counterfactual {cf:.4f}" if cf is not None else ""), file=sys.stderr)
        self.last = self.clock()  # the evaluation's time is not the next step's


class BarOnly(ProgressCallback):
    """The Trainer's progress bar (on stderr) without its on_log, which printed the Trainer's final dict to
    stdout, which carries only JSON."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass
