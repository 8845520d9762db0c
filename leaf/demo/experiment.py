"""The demo's experiment: which distillation settings it compares, and the data each one trains on.

Every setting distils the same student from the same teacher on the same originals, with the same steps, batch,
learning rate and seed; they differ only in the counterfactuals paired with the originals (and the 2x-batch
KD row in its batch). The rows:

- KD w/o mask: λ = 1, originals only (the paper's baseline).
- KD 2x batch: λ = 1 with twice the batch: meant as an upper bound on every LeaF row's compute (an
  original plus at most one counterfactual per level each); the report checks it against the measured compute
  column and says which rows, if any, exceed it.
- LeaF instr / LeaF instr+resp: gradient-detected counterfactuals (leaf analyze, the variant chosen on validation),
  instruction level / both levels; span pruning.
- LeaF collective: all detected spans of a sample removed at once (the paper's ablation).
- Random mask / PPL mask: as many flagged tokens per problem as the gradient mask, at random / where the student
  is most surprised (leaf analyze's baselines, the paper's ablation), grown to spans, pruned and verified the same
  way (so the pruned sizes can differ: random flags scatter over more clauses than clustered gradient flags; the
  detection table gives both).
- Oracle: the true distractors removed (the clean twin): what perfect detection would give.

Counterfactuals pass the paper's verification (both models answer them correctly) in every setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leaf.demo.task import Problem
from leaf.records import AnalysedSample


@dataclass(frozen=True)
class Setting:
    name: str
    mode: str                    # leaf distill --mode
    source: str | None           # counterfactuals: gradient, collective, random, ppl, oracle; None for KD
    lam: str = "linear:0.8:0.5"
    batch_scale: int = 1

    @property
    def folder(self) -> str:
        return self.name.lower().replace(" w/o mask", "").replace(" ", "-").replace("+", "-")


SETTINGS = (
    Setting("KD w/o mask", "kd", None, lam="1.0"),
    Setting("KD 2x batch", "kd", None, lam="1.0", batch_scale=2),
    Setting("LeaF instr", "instr", "gradient"),
    Setting("LeaF instr+resp", "instr+resp", "gradient"),
    Setting("LeaF collective", "instr", "collective"),
    Setting("Random mask", "instr", "random"),
    Setting("PPL mask", "instr", "ppl"),
    Setting("Oracle", "instr", "oracle"),
)
SETTING_NAMES = tuple(s.name for s in SETTINGS)
SOURCES = ("gradient", "collective", "random", "ppl")  # the ones leaf analyze writes


@dataclass(frozen=True)
class Variant:
    """A detection rule compared on the validation split: how flags are decided and how far spans grow."""

    name: str
    label: str
    threshold: str = "iqr"
    aggregate: str = "token"
    span_unit: str = "word"
    quantile: float = 0.05

    def analyze_args(self) -> dict:
        return {"threshold": self.threshold, "aggregate": self.aggregate, "span_unit": self.span_unit,
                "quantile": self.quantile, "baseline_count": self.threshold}


VARIANTS = (
    Variant("paper", "token flags (iqr), word spans: the paper's rule"),
    Variant("clause", "token flags (iqr), grown to clauses", span_unit="clause"),
    Variant("sentence", "token flags (iqr), grown to sentences", span_unit="sentence"),
    Variant("lowest-sentence", "the sentence with the lowest mean Δ", threshold="quantile", aggregate="sentence",
            span_unit="sentence", quantile=0.01),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    from leaf.io import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def counterfactual_rows(records: list[AnalysedSample]) -> list[dict]:
    """A leaf analyze folder's (verified) counterfactuals as rows of a counterfactual file: id, question, solution."""
    rows = []
    for record in records:
        for level, cf in record.counterfactuals():
            question, solution = cf.texts(record)
            if question.strip() and solution.strip():  # (without --verify nothing drops these)
                rows.append({"id": record.id, "question": question, "solution": solution, "level": level})
    return rows


def oracle_rows(kept: list[Problem], verified: list[bool]) -> list[dict]:
    """The clean twin of each kept problem as its counterfactual, where both models answer it correctly."""
    return [{"id": p.id, "question": p.clean_question, "solution": p.solution, "level": "instruction"}
            for p, ok in zip(kept, verified) if ok and p.distractors]


def originals(kept: list[Problem], clean: list[Problem]) -> list[dict]:
    """The distillation originals: the kept (selected) problems, then the clean problems mixed in."""
    return [{"id": p.id, "question": p.question, "solution": p.solution} for p in [*kept, *clean]]


def person_removed(records: list[AnalysedSample]) -> float | None:
    """Share of the distractors that name a person (all but the off-topic ones) whose name the instruction-level
    spans remove: with its number, what misleads the student."""
    from leaf.demo.task import NAMES

    removed = named = 0
    for record in records:
        spans = record.instruction_spans()
        for a, b in record.gold_spans or []:
            words = record.prompt[a:b].split()
            if not words or words[0] not in NAMES:
                continue
            named += 1
            end = a + len(words[0])
            removed += any(x <= a and end <= y for x, y in spans)
    return removed / named if named else None


def first_step_kl(log_path: Path) -> dict:
    """The loss terms as a distill run starts (log.jsonl), in nats per response token: the KL on the originals at
    the first optimizer step (before any update), and on the counterfactuals at the first step whose batch held one
    (`counterfactual_step`; None when no step did)."""
    steps = optimizer_steps(log_path)
    with_cf = next((line for line in steps if line["kd_counterfactual"] is not None), None)
    return {"original": steps[0]["kd_original"],
            "counterfactual": with_cf["kd_counterfactual"] if with_cf else None,
            "counterfactual_step": with_cf["step"] if with_cf else None}


def compute(log_path: Path) -> int:
    """Tokens through the student's forward passes over a distill run (originals and counterfactuals)."""
    return sum(line["tokens"] for line in optimizer_steps(log_path))


def optimizer_steps(log_path: Path) -> list[dict]:
    """A distill run's log.jsonl lines of its optimizer steps (evaluation lines left out)."""
    return [line for line in map(json.loads, filter(str.strip, log_path.read_text().splitlines()))
            if not line.get("eval")]
