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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from leaf.analyze.config import AnalyzeConfig
from leaf.analyze.merge import merge_output
from leaf.analyze.parts import window_done
from leaf.analyze.select import AnswerChecks
from leaf.analyze.windows import WindowInputs, WindowRun, gold_spans
from leaf.errors import LeafError
from leaf.io import write_json_atomic
from leaf.run_folder import (FolderLock, check_run_folder, describe_model, gpu_share, process_device, processes,
                             versions)
from leaf.analyze.teacher_scores import TOKENIZER, TeacherScores

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from leaf.hooks import HookedModel


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


@dataclass(frozen=True)
class LoadedModels:
    """The teacher (its weights, or its stored --teacher-scores), the teacher that generates for --select/--verify
    (None when neither), the student (None in a teacher-only run) and the student's tokenizer."""

    teacher: HookedModel | TeacherScores
    generating_teacher: HookedModel | None
    student: HookedModel | None
    student_tokenizer: PreTrainedTokenizerBase | None


@dataclass(frozen=True)
class SampleRows:
    """The dataset as samples, the rows that could not be read (skipped and listed; --strict: an error), and the
    code rows' parsed tests for --select/--verify's grader (row -> tests)."""

    samples: list
    bad_rows: list[dict]
    code_tests: dict


class Analyzer:
    """One run of `leaf analyze`: prepare the folder, analyse window by window into parts/, then merge. It holds
    only the run's settings and its folder lock; what the stages make (samples, models, renderings) passes between
    them as values."""

    def __init__(self, config: AnalyzeConfig, command: list[str], progress: bool) -> None:
        self.config, self.command, self.progress = config, command, progress
        self.parts = config.output / "parts"
        self.lock = FolderLock(self.parts, "analyze")  # held by the main process from the first look at the folder

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

    def prepare_output(self, ranks, rows: SampleRows, models: LoadedModels, notes: list[str], n_windows: int) -> None:
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
                "samples": len(rows.samples), "windows": n_windows, "started": time.time(),
                "processes": ranks.num_processes, "bad_rows": rows.bad_rows, "notes": notes,
                "models": self.describe_models(models), "config": config.as_json(), "versions": versions(),
                "command": shlex.join(self.command), "teacher_max_length": models.teacher.max_length})
            if config.teacher_only:
                models.teacher.tokenizer.save_pretrained(str(config.output / TOKENIZER))
        ranks.wait_for_everyone()

    def describe_models(self, models: LoadedModels) -> dict:
        described = {"teacher": models.teacher.description if isinstance(models.teacher, TeacherScores)
                     else describe_model(models.teacher)}
        if not self.config.teacher_only:
            described["student"] = describe_model(models.student)
        return described

    # -- the run -------------------------------------------------------------------------------------------------
    def read_rows(self) -> SampleRows:
        """The dataset's samples (--limit), with --domain settled and every gold field and code row's tests checked
        before any model loads."""
        from leaf.data import load_records, to_samples

        config, bad_rows = self.config, []
        samples = to_samples(load_records(config.data), prompt_field=config.prompt_field,
                             response_field=config.response_field, id_field=config.id_field,
                             skipped=None if config.strict else bad_rows)
        if bad_rows:
            self.say(f"skipping {len(bad_rows)} unreadable row(s) (listed in summary.json's bad_rows; --strict "
                     f"stops at the first): {bad_rows[0]['reason']}")
        if config.limit:
            samples = samples[: config.limit]
        config.settle(samples)  # --domain auto decided by the rows; the domain's --quantile and answer prefix
        for sample in samples:  # gold fields checked up front, before any model loads
            gold_spans(config, sample)
        code_tests: dict = {}
        if config.select or config.verify:  # code rows' tests: valid, and permission to run answers, up front
            from leaf.programs import has_tests, tests_of

            code_tests = {k: tests_of(s.record, f"{config.data}: sample {s.id}") for k, s in enumerate(samples)
                          if has_tests(s.record)}
            if code := len(code_tests):
                config.sandbox().require(f"leaf analyze --select/--verify on {code} code rows", 2 * code)
        return SampleRows(samples, bad_rows, code_tests)

    def load_models(self, device: str, max_memory: dict[int, int] | None) -> LoadedModels:
        """The teacher (its weights, or its stored scores) and the student (its weights, or with --teacher-only
        just its tokenizer for the chat template). max_memory: this process's GPU share for the teacher."""
        from leaf.hooks import load_model
        from leaf.hooks.loading import load_tokenizer

        config = self.config
        load = dict(device=device, dtype=config.dtype, allow_pickle=config.allow_pickle,
                    trust_remote_code=config.trust_remote_code)
        if config.teacher_scores:
            teacher = TeacherScores(config.teacher_scores)
            generating = (load_model(config.teacher, **load, device_map=config.device_map, max_memory=max_memory)
                          if config.select or config.verify else None)
        else:
            teacher = generating = load_model(config.teacher, **load, device_map=config.device_map,
                                              max_memory=max_memory)
        if config.teacher_only:
            tokenizer = (load_tokenizer(config.student, trust_remote_code=config.trust_remote_code)
                         if config.student else None)
            return LoadedModels(teacher, generating, None, tokenizer)
        student = load_model(config.student, **load)
        return LoadedModels(teacher, generating, student, student.tokenizer)

    def run(self) -> dict:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        import time

        started = time.perf_counter()
        config = self.config
        ranks = processes(config.device)
        self.take_lock(ranks)
        rows = self.read_rows()
        samples = rows.samples
        self.check_output(config.fingerprint())  # an existing folder or other settings: said before loading
        share = gpu_share(ranks) if config.device_map == "auto" and ranks.num_processes > 1 else None
        say = self.say if ranks.is_main_process else (lambda message: None)
        say(f"{len(samples)} samples from {config.data}; loading the models (teacher "
            f"{config.teacher_scores or config.teacher}, student {config.student})")
        models = self.load_models(process_device(config.device, ranks, share), share)
        say("models loaded; rendering and analysing")
        inputs, notes = self.render_all(rows, models)
        if isinstance(models.teacher, TeacherScores):
            models.teacher.check_covers([t.text for t in inputs.rendered_teacher], [s.id for s in samples])
        windows = [list(range(i, min(i + config.window, len(samples)))) for i in range(0, len(samples), config.window)]
        self.prepare_output(ranks, rows, models, notes, len(windows))
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

            for w in mine:
                if not window_done(config.output, w):
                    WindowRun(inputs, w, windows[w], ticker=ticker).run()
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

    def render_all(self, rows: SampleRows, models: LoadedModels) -> tuple[WindowInputs, list[str]]:
        """Each model's text of every sample (--template: own by default, BOS included), and the base rendering the
        records and spans refer to: the student's (the teacher's in a teacher-only run); with the notes the
        rendering gives (what --template did to the first sample)."""
        from leaf.rendering import Renderer

        config, samples = self.config, rows.samples
        renderer = Renderer(config.template, models.teacher.tokenizer, models.student_tokenizer,
                            answer_prefix=config.answer_prefix_text())
        rendered_teacher = [renderer.render("teacher", s.prompt, s.response) for s in samples]
        rendered = ([renderer.render("student", s.prompt, s.response) for s in samples]
                    if models.student_tokenizer is not None and not config.teacher_only else rendered_teacher)
        notes = renderer.notes(samples[0].prompt, samples[0].response) if samples else []
        checks = AnswerChecks(config, samples, renderer, models.generating_teacher, models.student, rows.code_tests)
        return WindowInputs(config, models.teacher, models.student, samples, rendered, rendered_teacher, renderer,
                            checks), notes
