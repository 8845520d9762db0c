"""`leaf analyze`: confounding-token detection and counterfactual pruning on a teacher/student pair (stage 1).

    leaf analyze --teacher T --student S --data train.jsonl --output runs/analyze [--threshold iqr] [--resume]

Per sample: both models' per-token gradient sensitivity of the response NLL (leaf.hooks), min-max normalised; the
teacher's scores carried onto the student's tokens through character offsets (any two tokenizers); Δ = teacher -
student, normalised; flags by a threshold mode; spans of flagged tokens in character offsets; counterfactuals with
one span (span pruning) or all spans (collective pruning) removed. Work goes in windows of samples; each finished
window is written atomically under parts/, so `--resume` skips it, and the final files are merged from the parts.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from leaf.errors import LeafError
from leaf.analyze.config import AnalyzeConfig
from leaf.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from leaf.run_folder import (FolderLock, check_run_folder, describe_model, gpu_share, process_device, processes,
                             versions)
from leaf.analyze.teacher_scores import (INDEX, KIND, SCORES, TOKENIZER, TeacherScore, TeacherScores, score_key,
                                 text_digest)

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


def part_path(output: Path, window: int, suffix: str) -> Path:
    return output / "parts" / f"part-{window:05d}{suffix}"


def window_done(output: Path, window: int) -> bool:
    """A window counts as done only when its three part files exist, read back and agree with the counts file:
    as many records as samples, the records' digest, as many tensors (a file that lost lines is redone)."""
    from safetensors import safe_open

    try:
        counts = json.loads(part_path(output, window, ".counts.json").read_text())
        with safe_open(str(part_path(output, window, ".safetensors")), "pt") as handle:
            tensors = len(list(handle.keys()))
        text = part_path(output, window, ".jsonl").read_text(encoding="utf-8")
        lines = text.splitlines()
        return (all(json.loads(line) for line in lines) and len(lines) == counts["samples"]
                and tensors == counts["tensors"] and hashlib.sha256(text.encode()).hexdigest() == counts["sha256"])
    except Exception:  # missing, truncated or unreadable (safetensors raises its own types): redo the window
        return False


class Analyzer:
    """One run of `leaf analyze`: prepare the folder, analyse window by window into parts/, then merge."""

    def __init__(self, config: AnalyzeConfig, command: list[str], progress: bool) -> None:
        self.config, self.command, self.progress = config, command, progress
        self.parts = config.output / "parts"
        self.engines: list = []  # vLLM engines (teacher, student), started on first use
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
                "notes": self.notes, "models": self.describe_models(), "config": config.as_json(),
                "versions": versions(), "command": shlex.join(self.command),
                "teacher_max_length": self.teacher.max_length})
            if config.teacher_only:
                self.teacher.tokenizer.save_pretrained(str(config.output / TOKENIZER))
        ranks.wait_for_everyone()

    def part_path(self, window: int, suffix: str) -> Path:
        return part_path(self.config.output, window, suffix)

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
        samples = to_samples(load_records(config.data), prompt_field=config.prompt_field,
                             response_field=config.response_field, id_field=config.id_field)
        if config.limit:
            samples = samples[: config.limit]
        for sample in samples:  # gold fields checked up front, before any model loads
            self.gold_spans(sample)
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
                    self.analyze_window(w, windows[w])
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

        self.renderer = Renderer(self.config.template, self.teacher.tokenizer, self.student_tokenizer)
        self.rendered_teacher = [self.renderer.render("teacher", s.prompt, s.response) for s in samples]
        self.rendered = ([self.renderer.render("student", s.prompt, s.response) for s in samples]
                         if self.student_tokenizer is not None and not self.config.teacher_only
                         else self.rendered_teacher)
        if samples:
            self.notes += self.renderer.notes(samples[0].prompt, samples[0].response)
        self.samples = samples

    # -- one window ----------------------------------------------------------------------------------------------
    def gold_spans(self, sample) -> list[tuple[int, int]] | None:
        from leaf.gold import spans_from_field, spans_from_pair

        config = self.config
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

    def reference_answer(self, row: int) -> str | None:
        """--answer-field's value, else the final answer extracted from the reference response."""
        from leaf.answers import extract_answer

        sample, field_name = self.samples[row], self.config.answer_field
        if field_name and sample.record.get(field_name) is not None:
            return str(sample.record[field_name])
        return extract_answer(sample.response)

    def answer_all(self, heads: dict[str, list[str]]) -> list[list[str]]:
        """Greedy continuations by the teacher and the student, each of its own rendered prompt heads
        ({"teacher": [...], "student": [...]}); returns [teacher's, student's]."""
        from leaf.serve.engines import engine_for_model, generate_texts

        config = self.config
        if not self.engines:
            self.engines = [engine_for_model(model, config.generator, batch_size=config.batch_size, seed=config.seed,
                                             allow_pickle=config.allow_pickle,
                                             trust_remote_code=config.trust_remote_code)
                            for model in (self.generating_teacher, self.student)]
        return [generate_texts(engine, heads[who], max_new_tokens=config.max_new_tokens)
                for who, engine in zip(("teacher", "student"), self.engines)]

    def gold_exact(self, sample) -> bool:
        """Whether the gold spans are exact: a --gold text field, or a --gold-pair that is a pure insertion."""
        from leaf.gold import is_pure_insertion

        if not self.config.gold_pair:
            return True
        return is_pure_insertion(*(sample.record[name] for name in self.config.gold_fields))

    def select(self, rows: list[int]) -> dict[int, dict]:
        """--select: greedy answers of both models; keep rows where the teacher is right and the student wrong."""
        from leaf.answers import extract_answer, is_correct

        teacher, student = self.answer_all({who: [self.renderer.head(who, self.samples[r].prompt) for r in rows]
                                            for who in ("teacher", "student")})
        out = {}
        for k, r in enumerate(rows):
            reference = self.reference_answer(r)
            result = {"reference": reference}
            for name, gens in (("teacher", teacher), ("student", student)):
                result[f"{name}_answer"] = extract_answer(gens[k])
                result[f"{name}_correct"] = bool(reference) and is_correct(gens[k], reference)
            result["kept"] = result["teacher_correct"] and not result["student_correct"]
            out[r] = result
        return out

    def verify(self, records: list[dict]) -> int:
        """--verify: drop instruction-level counterfactuals that either model answers wrongly; returns how many."""
        from leaf.answers import is_correct

        jobs = []  # (row, counterfactual)
        for record in records:
            for unit in record["units"]:
                for cf in unit["counterfactuals"]:
                    if cf["field"] == "prompt" and cf["prompt"].strip():
                        jobs.append((record["row"], cf))
                    elif cf["field"] == "prompt":  # everything pruned: nothing left to answer
                        cf["verified"] = False
                    else:  # response-level counterfactuals change the reference, not the question: not checked
                        cf["verified"] = None
        gens = self.answer_all({who: [self.renderer.head(who, cf["prompt"]) for _, cf in jobs]
                                for who in ("teacher", "student")}) if jobs else []
        for k, (row, cf) in enumerate(jobs):
            reference = self.reference_answer(row)
            cf["verified"] = bool(reference) and all(is_correct(g[k], reference) for g in gens)
        dropped = 0
        for record in records:
            for unit in record["units"]:
                kept = [cf for cf in unit["counterfactuals"] if cf.get("verified", True) is not False]
                dropped += len(unit["counterfactuals"]) - len(kept)
                unit["counterfactuals"] = kept
        return dropped

    def units_of(self, row: int) -> list:
        from leaf.analyze.detect import Unit
        from leaf.segments import split_response

        config = self.config
        base = self.rendered[row]
        text, pspan, rspan = base.text, base.prompt, base.response
        units = []
        if config.level in ("instruction", "both"):
            units.append(Unit("instruction", None, target=rspan, region=pspan, base=pspan))
        if config.level in ("response", "both"):
            segs = [(rspan[0] + a, rspan[0] + b) for a, b in split_response(text[rspan[0]: rspan[1]], config.segments)]
            for k in range(1, len(segs)):
                units.append(Unit("response", k + 1, target=segs[k], region=(rspan[0], segs[k][0]), base=rspan))
        return units

    def analyze_window(self, window: int, rows: list[int]) -> None:
        import time

        from leaf.analyze.detect import detect
        from leaf.gold import DetectionCounts
        from leaf.hooks import HookPlan, encode_text, run
        from leaf.hooks.batching import tokens_in
        from leaf.rendering import map_offsets, map_span

        clock = time.perf_counter()
        config, teacher_only = self.config, self.config.teacher_only
        counts = {"skipped_too_long": 0, "filtered_selection": 0, "counterfactuals_dropped": 0,
                  "units_without_target": 0, "no_reference_answer": 0}
        detection: dict[str, DetectionCounts] = {}
        exact: dict[str, DetectionCounts] = {}  # --gold-pair rows whose question is a pure insertion
        records: dict[int, dict] = {}
        selection = self.select(rows) if config.select else {}
        jobs = []  # (row, unit, student encoding, teacher encoding, student target mask, teacher target mask)
        for r in rows:
            sample, base, t_view = self.samples[r], self.rendered[r], self.rendered_teacher[r]
            text, pspan, rspan = base.text, base.prompt, base.response
            record = {"row": r, "id": sample.id, "status": "ok", "text": text, "prompt": sample.prompt,
                      "response": sample.response, "prompt_span": list(pspan), "response_span": list(rspan)}
            if teacher_only:
                record["text_sha256"] = text_digest(text)
            records[r] = record
            if r in selection:
                record["selection"] = selection[r]
                counts["no_reference_answer"] += not selection[r]["reference"]
                if not selection[r]["kept"]:
                    record["status"] = "filtered_selection"
                    counts["filtered_selection"] += 1
                    continue
            t_enc = encode_text(self.teacher.tokenizer, t_view.text, t_view.prompt, t_view.response)
            s_enc = None if teacher_only else encode_text(self.student.tokenizer, text, pspan, rspan)
            limits = [(len(t_enc.input_ids), self.teacher.max_length)]
            if s_enc is not None:
                limits.append((len(s_enc.input_ids), self.student.max_length))
            if any(limit is not None and n > limit for n, limit in limits):
                record["status"] = "skipped_too_long"
                record["tokens"] = dict(zip(("teacher", "student"), (n for n, _ in limits)))
                counts["skipped_too_long"] += 1
                continue
            gold = self.gold_spans(sample)
            if gold is not None and not teacher_only:
                record["gold_spans"] = [list(g) for g in gold]
                record["gold_exact"] = self.gold_exact(sample)
            for unit in self.units_of(r):
                t_target = tokens_in(t_enc.offsets, t_enc.special_mask, map_span(unit.target, base, t_view))
                s_target = t_target if s_enc is None else tokens_in(s_enc.offsets, s_enc.special_mask, unit.target)
                s_target[0] = t_target[0] = False
                if s_target.any() and t_target.any():
                    jobs.append((r, unit, s_enc, t_enc, s_target, t_target))
                else:  # e.g. a segment no token lies wholly inside
                    counts["units_without_target"] += 1
            record["units"] = []
        tensors = {}
        if jobs:
            passes = (0 if isinstance(self.teacher, TeacherScores) else 1) + (0 if teacher_only else 1)
            self.on_batch = self.ticker(len(jobs), len(rows), passes)
            t_res = self.teacher_scores_of(jobs)
            if teacher_only:
                for (r, unit, _, t_enc, _, _), t in zip(jobs, t_res):
                    key = score_key(records[r]["text"], unit.target)
                    records[r]["units"].append({"key": key, "level": unit.level, "segment": unit.segment,
                                                "target": list(unit.target), "loss": t.loss,
                                                "tokens": len(t_enc.input_ids)})
                    tensors[key] = t.saliency.float().contiguous()
            else:
                # the student's per-token surprisal feeds the ppl baseline (the chosen mode, or a detection row)
                need_ppl = config.threshold == "ppl" or config.gold is not None or config.gold_pair is not None
                s_res = run(self.student, [j[2].input_ids for j in jobs],
                            HookPlan(saliency="grad", target_mask=[j[4] for j in jobs], token_nll=need_ppl,
                                     gradient_checkpointing=config.gradient_checkpointing),
                            batch_size=config.batch_size, on_batch=self.on_batch)
                for (r, unit, s_enc, t_enc, _, _), s, t in zip(jobs, s_res, t_res):
                    record = records[r]
                    # the teacher's token offsets in the student's text (its own rendering may differ)
                    t_enc = replace(t_enc, offsets=map_offsets(t_enc.offsets, self.rendered_teacher[r],
                                                               self.rendered[r]))
                    gold = [tuple(g) for g in record["gold_spans"]] if "gold_spans" in record else None
                    unit_record, unit_tensors = detect(
                        config, unit, record["text"], s_enc, t_enc, s.saliency, t.saliency, s.token_nll,
                        seed=config.seed * 1_000_003 + r, gold_spans=gold,
                        counts=([detection, exact] if record["gold_exact"] else [detection])
                        if (gold is not None and unit.level == "instruction") else None)
                    unit_record["nll"] = {"teacher": t.loss, "student": s.loss}
                    u = len(record["units"])
                    record["units"].append(unit_record)
                    if unit.level == "instruction":
                        record["nll"] = unit_record["nll"]
                    tensors.update({f"{r}.{u}.{name}": value.contiguous() for name, value in unit_tensors.items()})
        if config.verify:
            counts["counterfactuals_dropped"] = self.verify([rec for rec in records.values() if "units" in rec])
        # parts: tensors, then counts, then the jsonl that marks the window done (each file atomic)
        lines = "".join(json.dumps(records[r], ensure_ascii=False) + "\n" for r in rows)
        save_safetensors_atomic(self.part_path(window, ".safetensors"), tensors)
        write_json_atomic(self.part_path(window, ".counts.json"),
                          {"counts": counts, "detection": {m: c.__dict__ for m, c in detection.items()},
                           "detection_exact": {m: c.__dict__ for m, c in exact.items()},
                           "samples": len(rows), "tensors": len(tensors),
                           "sha256": hashlib.sha256(lines.encode()).hexdigest(),
                           "seconds": time.perf_counter() - clock, "finished": time.time()})
        write_text_atomic(self.part_path(window, ".jsonl"), lines)

    def teacher_scores_of(self, jobs) -> list:
        """The teacher's saliency and loss per job: run the teacher, or look them up in --teacher-scores."""
        from leaf.hooks import HookPlan, run

        if isinstance(self.teacher, TeacherScores):
            from leaf.rendering import map_span

            return [self.teacher.lookup(self.rendered_teacher[r].text,
                                        map_span(unit.target, self.rendered[r], self.rendered_teacher[r]),
                                        len(t_enc.input_ids), self.samples[r].id)
                    for r, unit, _, t_enc, _, _ in jobs]
        results = run(self.teacher, [j[3].input_ids for j in jobs],
                      HookPlan(saliency="grad", target_mask=[j[5] for j in jobs],
                               gradient_checkpointing=self.config.gradient_checkpointing),
                      batch_size=self.config.batch_size, on_batch=self.on_batch)
        return [TeacherScore(saliency=t.saliency, loss=t.loss) for t in results]


# -- merge -------------------------------------------------------------------------------------------------------
def merge_output(output: Path, *, wall_seconds: float | None = None) -> dict:
    """Merge the part files of an analyze folder into its final files, in sample order; return the summary.

    Needs no model: `leaf analyze --merge DIR` runs it on its own (e.g. after the processes of a sharded run
    finished on different machines). Every window must be done."""
    output = Path(output)
    try:
        run_info = json.loads((output / "parts" / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise LeafError(f"{output} holds no analyze parts to merge (no parts/run.json). Give the --output folder of "
                        "a `leaf analyze` run.") from None
    missing = [w for w in range(run_info["windows"]) if not window_done(output, w)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise LeafError(f"{len(missing)} of {run_info['windows']} windows of {output} are not finished (windows "
                        f"{shown}). Finish them with the same `leaf analyze` command and --resume, then merge.")
    config = run_info["config"]  # as recorded: not re-validated (the merge needs no model, vLLM or data)
    parts = [json.loads(part_path(output, w, ".counts.json").read_text()) for w in range(run_info["windows"])]
    timing = {"processes": run_info["processes"], "wall_seconds": wall_seconds,
              "window_seconds": sum(p["seconds"] for p in parts),
              "samples_this_run": sum(p["samples"] for p in parts if p["finished"] >= run_info["started"])}
    timing["samples_per_second"] = (timing["samples_this_run"] / wall_seconds) if wall_seconds else None
    if config.get("teacher_only"):
        return _merge_teacher_scores(output, run_info, parts, timing)
    return _merge_analysis(output, config, run_info, parts, timing)


def _read_parts(output: Path, windows: int):
    """(records, tensors) of every window, in order."""
    from safetensors.torch import load_file

    records, tensors = [], {}
    for w in range(windows):
        tensors.update(load_file(str(part_path(output, w, ".safetensors"))))
        records += [json.loads(line) for line in part_path(output, w, ".jsonl").read_text(encoding="utf-8")
                    .splitlines()]
    return records, tensors


def _merge_teacher_scores(output: Path, run_info: dict, parts: list, timing: dict) -> dict:
    records, tensors = _read_parts(output, run_info["windows"])
    for record in records:  # the store keeps what a lookup needs, not the texts
        for name in ("text", "prompt", "response"):
            record.pop(name, None)
    save_safetensors_atomic(output / SCORES, tensors)
    write_text_atomic(output / INDEX, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    counts = {"samples": run_info["samples"], "scored": sum(r["status"] == "ok" for r in records),
              "skipped_too_long": sum(p["counts"]["skipped_too_long"] for p in parts), "scores": len(tensors)}
    summary = {"kind": KIND, "output": str(output), "counts": counts, "models": run_info["models"],
               "teacher_max_length": run_info["teacher_max_length"], "notes": run_info["notes"],
               "config": run_info["config"], "versions": run_info["versions"], "command": run_info["command"],
               "timing": timing}
    write_json_atomic(output / "summary.json", summary)
    return summary


def _merge_analysis(output: Path, config: dict, run_info: dict, parts: list, timing: dict) -> dict:
    from leaf.gold import DetectionCounts
    from leaf.analyze.report import write_report

    notes = list(run_info["notes"])
    records, tensors = _read_parts(output, run_info["windows"])
    counts = {"samples": run_info["samples"], "analysed": 0, "skipped_too_long": 0, "filtered_selection": 0,
              "units": 0, "candidate_tokens": 0, "flagged_tokens": 0, "spans": 0, "counterfactuals": 0,
              "counterfactuals_dropped": 0}
    tables: dict[str, dict[str, DetectionCounts]] = {"detection": {}, "detection_exact": {}}
    for part in parts:
        for key, value in part["counts"].items():
            counts[key] = counts.get(key, 0) + value
        for name, table in tables.items():
            for mode, values in part[name].items():
                acc = table.setdefault(mode, DetectionCounts())
                for key, value in values.items():
                    if isinstance(value, int):
                        setattr(acc, key, getattr(acc, key) + value)
    thresholds = []
    for record in records:
        if record["status"] != "ok":
            continue
        counts["analysed"] += 1
        for unit in record["units"]:
            counts["units"] += 1
            counts["candidate_tokens"] += len(unit["tokens"])
            counts["flagged_tokens"] += sum(t["flag"] for t in unit["tokens"])
            counts["spans"] += len(unit["spans"])
            counts["counterfactuals"] += len(unit["counterfactuals"])
            if unit["threshold"] is not None:
                thresholds.append(unit["threshold"])
    if counts["units_without_target"]:
        notes.append(f"{counts['units_without_target']} analysis unit(s) had no token wholly inside their "
                     "loss span (e.g. a one-segment response at response level) and were skipped")
    if counts["no_reference_answer"]:
        notes.append(f"{counts['no_reference_answer']} sample(s) had no reference answer to check "
                     "--select against (give --answer-field); they were filtered out")
    if counts["analysed"] == 0:
        notes.append("no sample was analysed: see the counts above")
    if counts["skipped_too_long"]:
        notes.append(f"{counts['skipped_too_long']} sample(s) longer than a model's context were skipped, "
                     "not truncated (status skipped_too_long in samples.jsonl)")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(output / "samples.jsonl", text)
    save_safetensors_atomic(output / "scores.safetensors", tensors)
    summary = {  # written after the files it describes: its presence marks a finished run (leaf.records)
        "output": str(output), "counts": counts,
        "files": {"samples.jsonl": {"records": len(records), "sha256": hashlib.sha256(text.encode()).hexdigest()},
                  "scores.safetensors": {"tensors": len(tensors)}},
        "threshold": {"mode": config["threshold"], "tau": config["tau"], "quantile": config["quantile"],
                      "baseline_count": config["baseline_count"],
                      "mean_applied": sum(thresholds) / len(thresholds) if thresholds else None},
        "detection": {mode: c.metrics() for mode, c in tables["detection"].items()} or None,
        "detection_exact": {mode: c.metrics() for mode, c in tables["detection_exact"].items()} or None,
        "models": run_info["models"], "notes": notes, "config": run_info["config"],
        "versions": run_info["versions"], "command": run_info["command"], "timing": timing,
    }
    write_json_atomic(output / "summary.json", summary)
    write_report(output / "report.html", records[: config["report_samples"]], summary)
    return summary


def format_summary(summary: dict) -> str:
    """The table printed at the end of `leaf analyze`."""
    c = summary["counts"]
    lines = [f"analysed {c['analysed']} of {c['samples']} samples "
             f"(skipped too long: {c['skipped_too_long']}, filtered by selection: {c['filtered_selection']})",
             f"units {c['units']}, flagged tokens {c['flagged_tokens']} of {c['candidate_tokens']} candidates, "
             f"spans {c['spans']}, counterfactuals {c['counterfactuals']} (dropped by verification: "
             f"{c['counterfactuals_dropped']})"]
    for key, title in (("detection", "all samples with gold"), ("detection_exact", "samples whose gold is exact")):
        detection = summary.get(key)
        if not detection:
            continue
        n = next(iter(detection.values()))["samples"]
        lines.append(f"\ndetection, {title} ({n}):")
        lines.append(f"{'mode':<10} {'tok P':>6} {'tok R':>6} {'tok F1':>6} {'span P':>6} {'span R':>6} "
                     f"{'span F1':>7} {'pruned F1':>9} {'distr. numbers removed':>22}")
        for mode, m in detection.items():
            numbers = (m.get("distractors") or {}).get("numbers_removed")
            pruned = m.get("pruned", m["token"])["f1"]
            lines.append(f"{mode:<10} {m['token']['precision']:>6.3f} {m['token']['recall']:>6.3f} "
                         f"{m['token']['f1']:>6.3f} {m['span']['precision']:>6.3f} {m['span']['recall']:>6.3f} "
                         f"{m['span']['f1']:>7.3f} {pruned:>9.3f} "
                         f"{'-' if numbers is None else format(numbers, '.3f'):>22}")
    lines.append(f"\nwrote {summary['output']}/samples.jsonl, scores.safetensors, summary.json, report.html")
    return "\n".join(lines)


def format_teacher_scores_summary(summary: dict) -> str:
    """What `leaf analyze --teacher-only` prints at the end."""
    c = summary["counts"]
    return (f"teacher scores of {c['scored']} of {c['samples']} samples ({c['scores']} losses; skipped too long: "
            f"{c['skipped_too_long']}) from {summary['models']['teacher']['name']}\n"
            f"wrote {summary['output']}/{SCORES}, {INDEX}, {TOKENIZER}/, summary.json; reuse them with "
            f"`leaf analyze --teacher-scores {summary['output']} --student S ...`")
