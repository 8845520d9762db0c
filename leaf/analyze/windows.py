"""One window of `leaf analyze`: its samples in, one part (records, tensors, counts) out.

Per window: --select's filter, then one `Job` per analysis unit (a loss and the region scored against it), the
teacher's gradient pass (or its stored scores), the student's, detection per unit (leaf.analyze.detect), --verify's
filter, and the part files (leaf.analyze.parts). A window reads `WindowInputs` (the config, the loaded models and
every sample's renderings, made once by leaf.analyze.run's `Analyzer`) and writes only its own part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from leaf.analyze.detect import Unit, detect
from leaf.analyze.parts import write_part
from leaf.analyze.teacher_scores import TeacherScore, TeacherScores, score_key, text_digest
from leaf.errors import LeafError
from leaf.records import AnalysedSample

if TYPE_CHECKING:
    from leaf.analyze.config import AnalyzeConfig
    from leaf.analyze.select import AnswerChecks
    from leaf.hooks import HookedModel
    from leaf.rendering import Renderer, Rendering


@dataclass
class Job:
    """One analysis unit of one sample, encoded for both models; the target masks select the loss's tokens."""

    row: int
    unit: Unit
    student: object | None          # the student's EncodedSample (None in a teacher-only run)
    teacher: object                 # the teacher's EncodedSample
    student_target: torch.Tensor    # (T_student,) bool
    teacher_target: torch.Tensor    # (T_teacher,) bool


def gold_spans(config, sample) -> list[tuple[int, int]] | None:
    """The ground-truth confounder spans of a sample's prompt (--gold or --gold-pair), None without either."""
    from leaf.gold import spans_from_field, spans_from_pair

    if config.gold:
        if config.gold not in sample.record:
            raise LeafError(f"Sample {sample.id!r} has no gold field {config.gold!r}. Fields: "
                            f"{', '.join(sample.record)}.")
        return spans_from_field(sample.prompt, sample.record[config.gold])
    if config.gold_pair:
        a, b = config.gold_fields
        for name in (a, b):
            if name not in sample.record:
                raise LeafError(f"Sample {sample.id!r} has no field {name!r} (from --gold-pair). Fields: "
                                f"{', '.join(sample.record)}.")
        if sample.record[a] != sample.prompt:
            raise LeafError(f"--gold-pair's first field {a!r} must be the prompt field the sample is read from.")
        return spans_from_pair(sample.record[a], sample.record[b])
    return None


def gold_exact(config, sample) -> bool:
    """Whether the gold spans are exact: a --gold text field, or a --gold-pair that is a pure insertion."""
    from leaf.gold import is_pure_insertion

    if not config.gold_pair:
        return True
    return is_pure_insertion(*(sample.record[name] for name in config.gold_fields))


def units_of(config, base) -> list[Unit]:
    """The analysis units of one rendered sample: the response's NLL over the instruction (instruction level),
    segment k's NLL over the segments before it (response level)."""
    from leaf.segments import split_response

    text, pspan, rspan = base.text, base.prompt, base.response
    units = []
    if config.level in ("instruction", "both"):
        units.append(Unit("instruction", None, target=rspan, region=pspan, base=pspan))
    if config.level in ("response", "both"):
        segs = [(rspan[0] + a, rspan[0] + b) for a, b in split_response(text[rspan[0]: rspan[1]], config.segments,
                                                                          code=config.domain == "code")]
        for k in range(1, len(segs)):
            units.append(Unit("response", k + 1, target=segs[k], region=(rspan[0], segs[k][0]), base=rspan))
    return units


@dataclass(frozen=True)
class WindowInputs:
    """What every window reads, made once per run: the config, the teacher (a HookedModel or its stored
    TeacherScores) and the student (None in a teacher-only run), the samples, the base rendering the records refer
    to and the teacher's own (per row), the Renderer, and --select/--verify's AnswerChecks."""

    config: AnalyzeConfig
    teacher: HookedModel | TeacherScores
    student: HookedModel | None
    samples: list
    rendered: list[Rendering]
    rendered_teacher: list[Rendering]
    renderer: Renderer
    checks: AnswerChecks


def _no_ticker(jobs: int, samples: int, passes: int):
    return None


class WindowRun:
    """Analyse one window of rows and write its part. `ticker(jobs, samples, passes)` gives the per-batch progress
    callback of the model passes (leaf.hooks.run's on_batch)."""

    def __init__(self, inputs: WindowInputs, window: int, rows: list[int], *, ticker=_no_ticker) -> None:
        self.inputs, self.window, self.rows, self.ticker = inputs, window, rows, ticker
        self.config = inputs.config
        self.counts = {"skipped_too_long": 0, "filtered_selection": 0, "counterfactuals_dropped": 0,
                       "units_without_target": 0, "no_reference_answer": 0, "counterfactuals_unparsable": 0}
        self.detection: dict = {}
        self.exact: dict = {}  # --gold-pair rows whose question is a pure insertion
        self.records: dict[int, AnalysedSample] = {}
        self.index_units: dict[int, list[dict]] = {}  # teacher-only: the score store's entries per row
        self.tensors: dict[str, torch.Tensor] = {}

    def run(self) -> None:
        clock = time.perf_counter()
        jobs = self.jobs(self.inputs.checks.select(self.rows) if self.config.select else {})
        if jobs:
            teacher_only = self.config.teacher_only
            passes = (0 if isinstance(self.inputs.teacher, TeacherScores) else 1) + (0 if teacher_only else 1)
            on_batch = self.ticker(len(jobs), len(self.rows), passes)
            teacher = self.teacher_scores(jobs, on_batch)
            if teacher_only:
                self.store_teacher_scores(jobs, teacher)
            else:
                self.detect_all(jobs, teacher, self.student_scores(jobs, on_batch))
        if self.config.verify:
            self.counts["counterfactuals_dropped"] = self.inputs.checks.verify(
                [rec for rec in self.records.values() if rec.units is not None])
        lines = [self.records[r].to_json() | ({"units": self.index_units[r]} if r in self.index_units else {})
                 for r in self.rows]
        write_part(self.config.output, self.window, lines, self.tensors,
                   {"counts": self.counts, "detection": {m: c.__dict__ for m, c in self.detection.items()},
                    "detection_exact": {m: c.__dict__ for m, c in self.exact.items()},
                    "seconds": time.perf_counter() - clock})

    def jobs(self, selection: dict[int, dict]) -> list[Job]:
        """A record per row, and a job per unit of each row that is analysed (selected, fits both contexts)."""
        from leaf.hooks import encode_text
        from leaf.hooks.templates import tokens_in
        from leaf.programs import test_fields
        from leaf.rendering import map_span

        inputs, config, teacher_only = self.inputs, self.config, self.config.teacher_only
        jobs = []
        for r in self.rows:
            sample, base, t_view = inputs.samples[r], inputs.rendered[r], inputs.rendered_teacher[r]
            record = AnalysedSample(row=r, id=sample.id, status="ok", prompt=sample.prompt, response=sample.response,
                                    text=base.text, prompt_span=base.prompt, response_span=base.response,
                                    text_sha256=text_digest(base.text) if teacher_only else None,
                                    answer_prefix=inputs.renderer.answer_prefix or None,
                                    tests=test_fields(sample.record))
            self.records[r] = record
            if r in selection:
                record.selection = selection[r]
                self.counts["no_reference_answer"] += not selection[r]["reference"]
                if not selection[r]["kept"]:
                    record.status = "filtered_selection"
                    self.counts["filtered_selection"] += 1
                    continue
            t_enc = encode_text(inputs.teacher.tokenizer, t_view.text, t_view.prompt, t_view.response)
            s_enc = None if teacher_only else encode_text(inputs.student.tokenizer, base.text, base.prompt,
                                                          base.response)
            limits = [(len(t_enc.input_ids), inputs.teacher.max_length)]
            if s_enc is not None:
                limits.append((len(s_enc.input_ids), inputs.student.max_length))
            if any(limit is not None and n > limit for n, limit in limits):
                record.status = "skipped_too_long"
                record.lengths = dict(zip(("teacher", "student"), (n for n, _ in limits)))
                self.counts["skipped_too_long"] += 1
                continue
            gold = gold_spans(config, sample)
            if gold is not None and not teacher_only:
                record.gold_spans, record.gold_exact = gold, gold_exact(config, sample)
            for unit in units_of(config, base):
                t_target = tokens_in(t_enc.offsets, t_enc.special_mask, map_span(unit.target, base, t_view))
                s_target = t_target if s_enc is None else tokens_in(s_enc.offsets, s_enc.special_mask, unit.target)
                s_target[0] = t_target[0] = False
                if s_target.any() and t_target.any():
                    jobs.append(Job(r, unit, s_enc, t_enc, s_target, t_target))
                else:  # e.g. a segment no token lies wholly inside
                    self.counts["units_without_target"] += 1
            record.units = []
        return jobs

    def teacher_scores(self, jobs: list[Job], on_batch=None) -> list[TeacherScore]:
        """The teacher's saliency and loss per job: run the teacher, or look them up in --teacher-scores."""
        from leaf.hooks import HookPlan, run
        from leaf.rendering import map_span

        inputs = self.inputs
        if isinstance(inputs.teacher, TeacherScores):
            return [inputs.teacher.lookup(inputs.rendered_teacher[j.row].text,
                                          map_span(j.unit.target, inputs.rendered[j.row],
                                                   inputs.rendered_teacher[j.row]),
                                          len(j.teacher.input_ids), inputs.samples[j.row].id)
                    for j in jobs]
        results = run(inputs.teacher, [j.teacher.input_ids for j in jobs],
                      HookPlan(saliency="grad", target_mask=[j.teacher_target for j in jobs],
                               gradient_checkpointing=self.config.gradient_checkpointing),
                      batch_size=self.config.batch_size, on_batch=on_batch)
        return [TeacherScore(saliency=t.saliency, loss=t.loss) for t in results]

    def student_scores(self, jobs: list[Job], on_batch=None) -> list:
        """The student's saliency and loss per job, and its per-token surprisal when a threshold mode needs it (the
        chosen mode, or a row of the detection table)."""
        from leaf.hooks import HookPlan, run

        config = self.config
        from leaf.analyze.thresholds import THRESHOLDS

        with_gold = config.gold is not None or config.gold_pair is not None  # the detection table runs every mode
        need_ppl = any("surprisal" in THRESHOLDS[m].needs for m in (THRESHOLDS if with_gold else [config.threshold]))
        return run(self.inputs.student, [j.student.input_ids for j in jobs],
                   HookPlan(saliency="grad", target_mask=[j.student_target for j in jobs], token_nll=need_ppl,
                            gradient_checkpointing=config.gradient_checkpointing),
                   batch_size=config.batch_size, on_batch=on_batch)

    def store_teacher_scores(self, jobs: list[Job], teacher: list[TeacherScore]) -> None:
        """--teacher-only: each unit's saliency under its store key, and the index entry that finds it."""
        for job, t in zip(jobs, teacher):
            key = score_key(self.records[job.row].text, job.unit.target)
            self.index_units.setdefault(job.row, []).append(
                {"key": key, "level": job.unit.level, "segment": job.unit.segment, "target": list(job.unit.target),
                 "loss": t.loss, "tokens": len(job.teacher.input_ids)})
            self.tensors[key] = t.saliency.float().contiguous()

    def detect_all(self, jobs: list[Job], teacher: list[TeacherScore], student: list) -> None:
        """Detection per unit; the unit's record joins its sample's, its tensors the part's."""
        from leaf.rendering import map_offsets

        inputs, config = self.inputs, self.config
        for job, s, t in zip(jobs, student, teacher):
            r, unit, record = job.row, job.unit, self.records[job.row]
            # the teacher's token offsets in the student's text (its own rendering may differ)
            t_enc = replace(job.teacher, offsets=map_offsets(job.teacher.offsets, inputs.rendered_teacher[r],
                                                                 inputs.rendered[r]))
            gold = record.gold_spans
            tables = ([self.detection, self.exact] if record.gold_exact else [self.detection]) \
                if (gold is not None and unit.level == "instruction") else None
            unit_record, unit_tensors = detect(config, unit, record.text, job.student, t_enc, s.saliency,
                                               t.saliency, s.token_nll, seed=config.seed * 1_000_003 + r,
                                               gold_spans=gold, counts=tables)
            unit_record.nll = {"teacher": t.loss, "student": s.loss}
            if config.domain == "code":
                self.check_parses(record, unit_record)
            u = len(record.units)
            record.units.append(unit_record)
            if unit.level == "instruction":
                record.nll = unit_record.nll
            self.tensors.update({f"{r}.{u}.{name}": value.contiguous() for name, value in unit_tensors.items()})

    def check_parses(self, record: AnalysedSample, unit) -> None:
        """Code: mark each counterfactual whose pruned field no longer parses (when its original's code did), count
        them, and drop them unless --unparsable keep."""
        from leaf.programs import still_parses

        kept = []
        for cf in unit.counterfactuals:
            original, pruned = (record.response, cf.response) if cf.field == "response" else (record.prompt, cf.prompt)
            cf.parses = still_parses(original, pruned)
            if cf.parses is False:
                self.counts["counterfactuals_unparsable"] += 1
                if self.config.unparsable == "drop":
                    continue
            kept.append(cf)
        unit.counterfactuals = kept
