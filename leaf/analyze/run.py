"""`leaf analyze`: confounding-token detection and counterfactual pruning on a teacher/student pair (stage 1).

    leaf analyze --teacher T --student S --data train.jsonl --output runs/analyze [--threshold iqr] [--resume]

Per sample: both models' per-token gradient sensitivity of the response NLL (leaf.hooks), min-max normalised; the
teacher's scores carried onto the student's tokens through character offsets (any two tokenizers); Δ = teacher -
student, normalised; flags by a threshold mode; spans of flagged tokens in character offsets; counterfactuals with
one span (span pruning) or all spans (collective pruning) removed. Work goes in windows of samples; each finished
window is written atomically under parts/, so `--resume` skips it, and the final files are merged from the parts.
"""

from __future__ import annotations

import shlex
import sys

from leaf.analyze.config import AnalyzeConfig
from leaf.analyze.merge import merge_output
from leaf.analyze.parts import window_done
from leaf.analyze.select import AnswerChecks
from leaf.analyze.windows import WindowRun, gold_spans
from leaf.errors import LeafError
from leaf.io import write_json_atomic
from leaf.run_folder import (FolderLock, check_run_folder, describe_model, gpu_share, process_device, processes,
                             versions)
from leaf.analyze.teacher_scores import TOKENIZER, TeacherScores


def run_analyze(config: AnalyzeConfig, *, command: list[str] | None = None, progress: bool = True) -> dict:
    """Run stage 1 over the dataset; write the output folder; return the summary.

    Under `accelerate launch` (or torchrun) every process runs this: the windows are dealt out round-robin by
    index, each process writes its own windows' part files, and the main process merges them once all are done, so
    the output equals a one-process run's. Other processes return {"rank": N}."""
    analyzer = Analyzer(config, command=command or sys.argv, progress=progress)
    try:
        return analyzer.run()
    finally:
        analyzer.lock.release()


class Analyzer:
    """One run of `leaf analyze`: prepare the folder, analyse window by window into parts/, then merge."""

    def __init__(self, config: AnalyzeConfig, command: list[str], progress: bool) -> None:
        self.config, self.command, self.progress = config, command, progress
        self.parts = config.output / "parts"
        self.lock = FolderLock(self.parts, "analyze")  # held by the main process from the first look at the folder
        self.ticker = lambda jobs, samples, passes: None    # the progress bar's per-batch callback, set by run()
        self.on_batch = None

    def take_lock(self, ranks) -> None:
        """Refuse a second run on this folder; early (before loading models) when the folder is already a run's."""
        if ranks.is_main_process and self.parts.is_dir():
            self.lock.acquire()

    # -- output folder and resume -------------------------------------------------------------------------------
    def check_output(self, fingerprint: dict) -> bool:
        """Never overwrite another run; --resume only with the same settings and data. Needs no model, so it runs
        before any loads (and again when the folder is claimed). Returns whether the folder holds this run (claimed:
        even before its first window; a teacher-only run has tokenizer/)."""
        return check_run_folder(self.config.output, self.parts / "manifest.json", fingerprint,
                                resume=self.config.resume, what="an analyze", ignore=(self.parts,))

    def prepare_output(self, ranks, n_samples: int, n_windows: int) -> None:
        """Check the folder (never overwrite another run; --resume only with the same settings), then claim it.
        Called after models and data loaded, so a typo in an argument leaves nothing behind. Every process
        checks before the main one writes."""
        import time

        config, manifest = self.config, self.parts / "manifest.json"
        fingerprint = config.fingerprint()
        started = self.check_output(fingerprint)  # again: the folder may have changed while models loaded
        ranks.wait_for_everyone()
        if ranks.is_main_process:
            self.parts.mkdir(parents=True, exist_ok=True)
            self.take_lock(ranks)
            if not started and manifest.exists():  # another run claimed the folder while this one loaded models
                raise LeafError(f"{config.output} was claimed by another leaf analyze run while this one started. "
                                "Choose another --output, or pass --resume once that run is done.")
            write_json_atomic(manifest, fingerprint)
            # what the merge needs besides the parts, so that `leaf analyze --merge DIR` runs without the models
            write_json_atomic(self.parts / "run.json", {
                "samples": n_samples, "windows": n_windows, "started": time.time(), "processes": ranks.num_processes,
                "bad_rows": self.bad_rows,
                "notes": self.notes, "models": self.describe_models(), "config": config.as_json(),
                "versions": versions(), "command": shlex.join(self.command),
                "teacher_max_length": self.teacher.max_length})
            if config.teacher_only:
                self.teacher.tokenizer.save_pretrained(str(config.output / TOKENIZER))
        ranks.wait_for_everyone()

    def describe_models(self) -> dict:
        models = {"teacher": self.teacher.description if isinstance(self.teacher, TeacherScores)
                  else describe_model(self.teacher)}
        if not self.config.teacher_only:
            models["student"] = describe_model(self.student)
        return models

    # -- the run -------------------------------------------------------------------------------------------------
    def load_models(self, device: str, max_memory: dict[int, int] | None) -> None:
        """The teacher (its weights, or its stored scores) and the student (its weights, or with --teacher-only
        just its tokenizer for the chat template). max_memory: this process's GPU share for the teacher."""
        from leaf.hooks import load_model
        from leaf.hooks.loading import load_tokenizer

        config = self.config
        load = dict(device=device, dtype=config.dtype, allow_pickle=config.allow_pickle,
                    trust_remote_code=config.trust_remote_code)
        if config.teacher_scores:
            self.teacher = TeacherScores(config.teacher_scores)
            self.generating_teacher = (load_model(config.teacher, **load, device_map=config.device_map,
                                                  max_memory=max_memory) if config.select or config.verify else None)
        else:
            self.teacher = load_model(config.teacher, **load, device_map=config.device_map, max_memory=max_memory)
            self.generating_teacher = self.teacher
        if config.teacher_only:
            self.student = None
            self.student_tokenizer = (load_tokenizer(config.student, trust_remote_code=config.trust_remote_code)
                                      if config.student else None)
        else:
            self.student = load_model(config.student, **load)
            self.student_tokenizer = self.student.tokenizer

    def run(self) -> dict:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from leaf.data import load_records, to_samples

        import time

        started = time.perf_counter()
        config = self.config
        ranks = processes(config.device)
        self.take_lock(ranks)
        self.bad_rows: list[dict] = []  # rows that cannot be samples: skipped and listed (--strict: an error)
        samples = to_samples(load_records(config.data), prompt_field=config.prompt_field,
                             response_field=config.response_field, id_field=config.id_field,
                             skipped=None if config.strict else self.bad_rows)
        if self.bad_rows:
            self.say(f"skipping {len(self.bad_rows)} unreadable row(s) (listed in summary.json's bad_rows; --strict "
                     f"stops at the first): {self.bad_rows[0]['reason']}")
        if config.limit:
            samples = samples[: config.limit]
        config.settle(samples)  # --domain auto decided by the rows; the domain's --quantile and answer prefix
        for sample in samples:  # gold fields checked up front, before any model loads
            gold_spans(config, sample)
        self.code_tests: dict = {}  # row -> its parsed tests, for --select/--verify's grader
        if config.select or config.verify:  # code rows' tests: valid, and permission to run answers, up front
            from leaf.programs import has_tests, tests_of

            self.code_tests = {k: tests_of(s.record, f"{config.data}: sample {s.id}") for k, s in enumerate(samples)
                               if has_tests(s.record)}
            if code := len(self.code_tests):
                config.sandbox().require(f"leaf analyze --select/--verify on {code} code rows", 2 * code)
        self.check_output(config.fingerprint())  # an existing folder or other settings: said before loading
        share = gpu_share(ranks) if config.device_map == "auto" and ranks.num_processes > 1 else None
        say = self.say if ranks.is_main_process else (lambda message: None)
        say(f"{len(samples)} samples from {config.data}; loading the models (teacher "
            f"{config.teacher_scores or config.teacher}, student {config.student})")
        self.load_models(process_device(config.device, ranks, share), share)
        say("models loaded; rendering and analysing")
        self.notes: list[str] = []
        self.render_all(samples)
        if isinstance(self.teacher, TeacherScores):
            self.teacher.check_covers([t.text for t in self.rendered_teacher], [s.id for s in samples])
        windows = [list(range(i, min(i + config.window, len(samples)))) for i in range(0, len(samples), config.window)]
        self.prepare_output(ranks, len(samples), len(windows))
        mine = [w for w in range(len(windows)) if w % ranks.num_processes == ranks.process_index]
        columns = [TextColumn("[bold]analyze" + (f" (process {ranks.process_index + 1} of {ranks.num_processes})"
                                                 if ranks.num_processes > 1 else "")),
                   BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} samples/s"),
                   TimeRemainingColumn()]
        with Progress(*columns, disable=not (self.progress and ranks.is_main_process),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("analyze", total=sum(len(windows[w]) for w in mine), rate="-")
            done = 0

            def ticker(jobs: int, samples: int, passes: int):
                """Advance the bar per batch of a model pass: a window's samples spread over its passes' jobs."""
                return lambda n: bar.advance(task, n / max(jobs, 1) * samples / max(passes, 1))

            self.ticker = ticker
            for w in mine:
                if not window_done(config.output, w):
                    WindowRun(self, w, windows[w]).run()
                done += len(windows[w])
                bar.update(task, completed=done)  # exact at each window's end (skipped windows, rounding)
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:.2f}" if speed else "-")
        ranks.wait_for_everyone()
        if not ranks.is_main_process:
            return {"rank": ranks.process_index}
        say("merging the windows; writing samples.jsonl, scores.safetensors, summary.json and report.html")
        return merge_output(config.output, wall_seconds=time.perf_counter() - started)

    def say(self, message: str) -> None:
        """A stage line on stderr (stdout carries only the final summary)."""
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def render_all(self, samples) -> None:
        """Each model's text of every sample (--template: own by default, BOS included), and the base rendering the
        records and spans refer to: the student's (the teacher's in a teacher-only run)."""
        from leaf.rendering import Renderer

        self.renderer = Renderer(self.config.template, self.teacher.tokenizer, self.student_tokenizer,
                                 answer_prefix=self.config.answer_prefix_text())
        self.rendered_teacher = [self.renderer.render("teacher", s.prompt, s.response) for s in samples]
        self.rendered = ([self.renderer.render("student", s.prompt, s.response) for s in samples]
                         if self.student_tokenizer is not None and not self.config.teacher_only
                         else self.rendered_teacher)
        if samples:
            self.notes += self.renderer.notes(samples[0].prompt, samples[0].response)
        self.samples = samples
        self.checks = AnswerChecks(self.config, samples, self.renderer, self.generating_teacher, self.student,
                                   self.code_tests)
