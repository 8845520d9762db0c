"""The stage contract: what `leaf analyze` writes and every later stage reads, as typed records.

An analyze folder holds `samples.jsonl` (one `AnalysedSample` per dataset row, in row order), `scores.safetensors`,
`report.html` and `summary.json`, written last: it records the schema version, the number of records and the digest
of samples.jsonl. This module is the only one that turns those lines into objects and back:

- `AnalysedSample` -> `AnalysedUnit` (one loss: the response at instruction level, a segment at response level) ->
  `TokenScore` (one candidate token's normalised scores and flag), `Span` (flagged characters, grown to the span
  unit) and `Counterfactual` (the sample with spans removed);
- `read_samples` / `check_finished`: a finished folder of this schema version (or a lone samples file), validated
  line by line with errors that name the file, the line and the field;
- `samples_text`: the JSONL text of records (analyze's window parts and its merged file).

Character positions in spans, tokens and counterfactual `removed` lists are relative to the field they lie in (the
prompt at instruction level, the response at response level), except `text`-level spans (`prompt_span`,
`response_span`, a unit's `target_span` / `region_span`, token `start` / `end`), which index `text`: the rendered
sample the student saw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import read_text

SCHEMA_VERSION = 1   # of samples.jsonl; summary.json's "schema". Raise it when a record's meaning changes.
SAMPLES, SCORES, SUMMARY = "samples.jsonl", "scores.safetensors", "summary.json"
STATUSES = ("ok", "skipped_too_long", "filtered_selection")
LEVELS = ("instruction", "response")


class RecordError(LeafError):
    """A record that is not as leaf analyze writes it."""


@dataclass
class TokenScore:
    """One candidate token of a unit's region: min-max normalised saliencies, Δ = teacher - student, the flag."""

    index: int      # position in the student's token sequence
    start: int      # characters of `text`
    end: int
    teacher: float
    student: float
    delta: float
    flag: bool


@dataclass
class Span:
    """Characters removed together: a run of flagged tokens grown to --span-unit, relative to the unit's field."""

    start: int
    end: int
    text: str
    tokens: list[int]   # the flagged tokens inside (student positions)


@dataclass
class Counterfactual:
    """The sample with spans removed. `prompt` / `response` hold the field(s) the pruning changed; None means the
    original's. `verified`: both models answer it correctly (--verify), False if not, None when not checked.
    `parses`: code: whether the pruned field's code still parses (None when not checked: math, or prose)."""

    removed: list[tuple[int, int]] = field(default_factory=list)
    prompt: str | None = None
    response: str | None = None
    verified: bool | None = None
    parses: bool | None = None

    @property
    def field(self) -> str:
        """The field that was pruned: 'response' when the response changed (a response-level counterfactual)."""
        return "response" if self.response is not None else "prompt"

    def texts(self, sample: AnalysedSample) -> tuple[str, str]:
        """(prompt, response) of this counterfactual of `sample`."""
        return (sample.prompt if self.prompt is None else self.prompt,
                sample.response if self.response is None else self.response)

    def to_json(self) -> dict:
        return _with_set({"field": self.field, "removed": [list(r) for r in self.removed]}, prompt=self.prompt,
                         response=self.response, verified=self.verified, parses=self.parses)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> Counterfactual:
        _need(obj, dict, where)
        changed = obj.get("field", "prompt")
        _check(changed in ("prompt", "response"), where, f"field must be prompt or response, got {changed!r}")
        _check(isinstance(obj.get(changed), str), where, f"a {changed}-field counterfactual needs its {changed} text")
        cf = cls(removed=[_pair(r, f"{where}.removed") for r in obj.get("removed", [])],
                 prompt=_optional(obj, "prompt", str, where), response=_optional(obj, "response", str, where),
                 verified=_optional(obj, "verified", bool, where), parses=_optional(obj, "parses", bool, where))
        return cf


@dataclass
class AnalysedUnit:
    """One analysis unit: a loss (its `target_span`) and the region whose tokens are scored against it."""

    level: str                               # instruction | response
    segment: int | None = None               # response level: the segment whose NLL is the loss (2 or 3)
    target_span: tuple[int, int] = (0, 0)    # characters of `text` whose tokens form the loss
    region_span: tuple[int, int] = (0, 0)    # characters of `text` whose tokens are scored
    threshold_mode: str | None = None
    threshold: float | None = None           # the threshold applied (None for count-based modes)
    tokens: list[TokenScore] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    counterfactuals: list[Counterfactual] = field(default_factory=list)
    nll: dict[str, float] | None = None      # {"teacher": .., "student": ..}: each model's mean NLL of the target

    def to_json(self) -> dict:
        return _with_set({"level": self.level, "segment": self.segment, "target_span": list(self.target_span),
                          "region_span": list(self.region_span), "threshold_mode": self.threshold_mode,
                          "threshold": self.threshold, "tokens": [t.__dict__ for t in self.tokens],
                          "spans": [s.__dict__ for s in self.spans],
                          "counterfactuals": [c.to_json() for c in self.counterfactuals]}, nll=self.nll)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> AnalysedUnit:
        _need(obj, dict, where)
        level = obj.get("level")
        _check(level in LEVELS, where, f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        return cls(level=level, segment=_optional(obj, "segment", int, where),
                   target_span=_pair(obj.get("target_span", (0, 0)), f"{where}.target_span"),
                   region_span=_pair(obj.get("region_span", (0, 0)), f"{where}.region_span"),
                   threshold_mode=_optional(obj, "threshold_mode", str, where),
                   threshold=_optional(obj, "threshold", (int, float), where),
                   tokens=[_build(TokenScore, t, f"{where}.tokens[{k}]") for k, t in enumerate(obj.get("tokens", []))],
                   spans=[_build(Span, s, f"{where}.spans[{k}]") for k, s in enumerate(obj.get("spans", []))],
                   counterfactuals=[Counterfactual.from_json(c, f"{where}.counterfactuals[{k}]")
                                    for k, c in enumerate(obj.get("counterfactuals", []))],
                   nll=_optional(obj, "nll", dict, where))


@dataclass
class AnalysedSample:
    """One dataset row after `leaf analyze`. `units` is None unless the sample was analysed (status ok)."""

    row: int
    id: str
    status: str
    prompt: str
    response: str
    text: str = ""                                  # the student's rendering (chat template, BOS) of the sample
    prompt_span: tuple[int, int] = (0, 0)           # where prompt and response lie in `text`
    response_span: tuple[int, int] = (0, 0)
    units: list[AnalysedUnit] | None = None
    selection: dict | None = None                   # --select: reference, each model's answer and correctness, kept
    lengths: dict[str, int] | None = None           # skipped_too_long: each model's token count
    gold_spans: list[tuple[int, int]] | None = None  # ground-truth confounders (--gold / --gold-pair), in the prompt
    gold_exact: bool | None = None
    nll: dict[str, float] | None = None             # the instruction-level unit's NLLs
    text_sha256: str | None = None                  # teacher-only parts: the key of the stored scores
    answer_prefix: str | None = None                # text between the generation prompt and the response (code)
    tests: dict | None = None                       # a code row's test fields (leaf.programs.test_fields)

    @property
    def analysed(self) -> bool:
        return self.status == "ok"

    def counterfactuals(self, levels: Iterable[str] = LEVELS) -> Iterator[tuple[str, Counterfactual]]:
        """(level, counterfactual) of every unit of those levels, in order."""
        levels = tuple(levels)
        for unit in self.units or []:
            if unit.level in levels:
                for cf in unit.counterfactuals:
                    yield unit.level, cf

    def instruction_spans(self) -> list[tuple[int, int]]:
        """The detected confounder spans of the prompt (every instruction-level unit), sorted, without repeats."""
        return sorted({(s.start, s.end) for unit in self.units or [] if unit.level == "instruction"
                       for s in unit.spans})

    def pruned_prompt(self) -> str | None:
        """The prompt with every detected instruction span removed (None when nothing was detected)."""
        from leaf.spans import remove_spans

        spans = self.instruction_spans()
        return remove_spans(self.prompt, spans) if spans else None

    def to_json(self) -> dict:
        gold = self.gold_spans is not None
        return _with_set({"row": self.row, "id": self.id, "status": self.status, "text": self.text,
                          "prompt": self.prompt, "response": self.response, "prompt_span": list(self.prompt_span),
                          "response_span": list(self.response_span)},
                         text_sha256=self.text_sha256, selection=self.selection, tokens=self.lengths,
                         gold_spans=[list(g) for g in self.gold_spans] if gold else None,
                         gold_exact=self.gold_exact if gold else None,
                         units=None if self.units is None else [u.to_json() for u in self.units], nll=self.nll,
                         answer_prefix=self.answer_prefix, tests=self.tests)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> AnalysedSample:
        _need(obj, dict, where)
        missing = [k for k in ("row", "id", "status", "prompt", "response") if k not in obj]
        _check(not missing, where, f"lacks {', '.join(missing)}: not a leaf analyze record")
        row = obj["row"]
        _check(isinstance(row, int) and not isinstance(row, bool) and row >= 0, where,
               f"'row' must be a non-negative integer, got {row!r}")
        _check(obj["status"] in STATUSES, where, f"status must be one of {', '.join(STATUSES)}, got {obj['status']!r}")
        for name in ("prompt", "response"):
            _check(isinstance(obj[name], str), where, f"{name!r} must be a string")
        units = obj.get("units")
        _check(units is None or isinstance(units, list), where, "'units' must be a list")
        gold = obj.get("gold_spans")
        return cls(row=row, id=str(obj["id"]), status=obj["status"], prompt=obj["prompt"], response=obj["response"],
                   text=_optional(obj, "text", str, where) or "",
                   prompt_span=_pair(obj.get("prompt_span", (0, 0)), f"{where}.prompt_span"),
                   response_span=_pair(obj.get("response_span", (0, 0)), f"{where}.response_span"),
                   units=None if units is None else [AnalysedUnit.from_json(u, f"{where}.units[{k}]")
                                                     for k, u in enumerate(units)],
                   selection=_optional(obj, "selection", dict, where), lengths=_optional(obj, "tokens", dict, where),
                   gold_spans=None if gold is None else [_pair(g, f"{where}.gold_spans") for g in gold],
                   gold_exact=_optional(obj, "gold_exact", bool, where), nll=_optional(obj, "nll", dict, where),
                   text_sha256=_optional(obj, "text_sha256", str, where),
                   answer_prefix=_optional(obj, "answer_prefix", str, where),
                   tests=_optional(obj, "tests", dict, where))


# -- files ---------------------------------------------------------------------------------------------------------
def samples_text(samples: Iterable[AnalysedSample]) -> str:
    """The JSONL text of records, one line each (the form of samples.jsonl and of analyze's part files)."""
    return "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_samples(text: str, file: Path | str) -> list[AnalysedSample]:
    """Records of a JSONL text, validated; RecordError naming the file and line otherwise."""
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{file}: line {number} is not valid JSON ({exc.msg}).") from None
        samples.append(AnalysedSample.from_json(obj, f"{file}: line {number}"))
    return samples


def check_finished(folder: Path) -> dict:
    """The summary of a finished analyze folder written by this schema version; LeafError naming the fix otherwise.

    A run writes samples.jsonl and scores.safetensors first and summary.json last (each atomically). A folder
    without summary.json (stopped, or a write failed on a full disk), whose samples.jsonl no longer matches it (cut
    short, edited), or written by an older or newer leaf is not read."""
    folder = Path(folder)
    if not (folder / SAMPLES).exists():
        raise LeafError(f"{folder} is not a `leaf analyze` output: no {SAMPLES}. Run leaf analyze first, or pass its "
                        "--output folder.")
    finish = (f"Finish it with the same `leaf analyze` command and --resume (finished windows are kept), or rebuild "
              f"the merged files with `leaf analyze --merge {folder}`.")
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeafError(f"{folder} holds an unfinished `leaf analyze` run: {SAMPLES} is there but {SUMMARY}, written "
                        f"last, is not (the run was stopped, or a write failed, e.g. on a full disk). {finish}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeafError(f"{folder / SUMMARY} is unreadable ({exc}). {finish}") from None
    check_schema(folder, summary)
    expected = summary["files"][SAMPLES]
    data = (folder / SAMPLES).read_bytes()
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        lines = sum(1 for line in data.splitlines() if line.strip())
        raise LeafError(f"{folder / SAMPLES} does not match {SUMMARY} ({lines} records, {expected['records']} "
                        f"written): it was cut short or edited. {finish}")
    return summary


def check_schema(folder: Path, summary: dict) -> None:
    """A folder of another schema version is refused with the version that wrote it and what to do."""
    found = summary.get("schema")
    if found == SCHEMA_VERSION:
        return
    wrote = (summary.get("versions") or {}).get("leaf-distill") or "unknown"
    if found is None or (isinstance(found, int) and found < SCHEMA_VERSION):
        raise LeafError(f"{folder} was written by an older leaf ({wrote}; records schema {found or 'unversioned'}, "
                        f"this leaf reads schema {SCHEMA_VERSION}). Run `leaf analyze` again with this version into "
                        "a new --output (or read it with the leaf that wrote it).")
    raise LeafError(f"{folder} was written by a newer leaf ({wrote}; records schema {found}, this leaf reads schema "
                    f"{SCHEMA_VERSION}). Upgrade leaf (pip install -U leaf-distill) to read it.")


def samples_file(path: Path) -> Path:
    """samples.jsonl of an analyze folder (checked finished) or a samples-shaped JSONL file. A file inside an analyze
    folder (beside summary.json or parts/) is checked like its folder; a file on its own is taken as given."""
    path = Path(path)
    if path.is_dir():
        check_finished(path)
        return path / SAMPLES
    if path.name == SAMPLES and ((path.parent / SUMMARY).exists() or (path.parent / "parts").is_dir()):
        check_finished(path.parent)
    return path


def read_samples(path: Path, *, analysed_only: bool = False) -> list[AnalysedSample]:
    """Every record of a finished analyze folder or samples file, in order (only status ok with analysed_only)."""
    file = samples_file(path)
    samples = parse_samples(read_text(file), file)
    return [s for s in samples if s.analysed] if analysed_only else samples


def is_samples_file(path: Path) -> bool:
    """Whether a path is an analyze folder or a JSONL file whose first record looks like an analysed sample."""
    path = Path(path)
    if path.is_dir():
        return (path / SAMPLES).exists()
    if path.name != SAMPLES and path.suffix != ".jsonl":
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
    except UnicodeDecodeError:
        from leaf.data import check_utf8

        check_utf8(path)  # raises, naming the byte
        raise
    try:
        return isinstance(row := json.loads(first), dict) and {"row", "status", "prompt", "response"} <= set(row)
    except json.JSONDecodeError:
        return False


def _with_set(out: dict, **optional) -> dict:
    """`out` and, in order, the optional entries that are set: a record leaves out what does not apply to it."""
    out.update((key, value) for key, value in optional.items() if value is not None)
    return out


# -- validation helpers --------------------------------------------------------------------------------------------
def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise RecordError(f"{where}: {message}. The file is not as leaf analyze wrote it; run leaf analyze again.")


def _need(obj, kind, where: str) -> None:
    _check(isinstance(obj, kind), where, f"expected {kind.__name__}, got {type(obj).__name__}")


def _optional(obj: dict, key: str, kind, where: str):
    value = obj.get(key)
    if value is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        _check(isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool)), where,
               f"{key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _pair(value, where: str) -> tuple[int, int]:
    _check(isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value), where,
           f"expected [start, end], got {value!r}")
    return int(value[0]), int(value[1])


def _build(cls, obj, where: str):
    _need(obj, dict, where)
    names = list(cls.__dataclass_fields__)
    missing = [n for n in names if n not in obj]
    _check(not missing, where, f"lacks {', '.join(missing)}")
    return cls(**{n: obj[n] for n in names})
