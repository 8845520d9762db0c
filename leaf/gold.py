"""Ground-truth distractor spans and how well the flags find them (token- and span-level precision/recall/F1)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from leaf.errors import LeafError

_WORD = re.compile(r"\S+")


def spans_from_text(prompt: str, distractor: str) -> list[tuple[int, int]]:
    """Where the distractor text sits in the prompt (exact match, else ignoring case); [] if absent."""
    distractor = str(distractor or "").strip()
    if not distractor:
        return []
    start = prompt.find(distractor)
    if start < 0:
        start = prompt.lower().find(distractor.lower())
    return [(start, start + len(distractor))] if start >= 0 else []


def spans_from_field(prompt: str, value) -> list[tuple[int, int]]:
    """Gold spans from a field: the distractor text, a list of texts, or a list of [start, end] character spans."""
    if isinstance(value, (list, tuple)):
        spans = []
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item):
                start, end = item
                if not 0 <= start < end <= len(prompt):
                    raise LeafError(f"Gold span {list(item)} lies outside the prompt ({len(prompt)} characters).")
                spans.append((start, end))
            else:
                spans += spans_from_text(prompt, item)
        return sorted(spans)
    return spans_from_text(prompt, value or "")


def spans_from_pair(question: str, clean_question: str) -> list[tuple[int, int]]:
    """The parts of `question` that its clean twin lacks (inserted or replaced words), as character spans."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(question)]
    clean = _WORD.findall(clean_question)
    matcher = difflib.SequenceMatcher(a=[question[s:e] for s, e in words], b=clean, autojunk=False)
    spans = []
    for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if tag in ("insert", "replace", "delete") and i2 > i1:
            spans.append((words[i1][0], words[i2 - 1][1]))
    return spans


def is_pure_insertion(question: str, clean_question: str) -> bool:
    """Whether `question` is its clean twin with words inserted and nothing else changed: then the diff-based gold
    spans are exact (GSM-Plus also rewords many questions, which makes their diff spans only approximate)."""
    words, clean = _WORD.findall(question), _WORD.findall(clean_question)
    matcher = difflib.SequenceMatcher(a=words, b=clean, autojunk=False)
    tags = {tag for tag, *_ in matcher.get_opcodes()} - {"equal"}
    return tags == {"delete"}  # a->b deletes exactly what question inserted


def token_gold(offsets: torch.Tensor, spans: list[tuple[int, int]], base: int = 0) -> torch.Tensor:
    """(T,) bool: tokens that overlap a gold span (spans in prompt coordinates, shifted by `base` into the text)."""
    out = torch.zeros(len(offsets), dtype=torch.bool)
    for start, end in spans:
        out |= (offsets[:, 0] < end + base) & (offsets[:, 1] > start + base)
    return out


@dataclass
class DetectionCounts:
    """Micro-averaged counts over samples; token counts are over candidate tokens only."""

    token_tp: int = 0
    token_fp: int = 0
    token_fn: int = 0
    spans_predicted: int = 0
    spans_predicted_correct: int = 0
    spans_gold: int = 0
    spans_gold_found: int = 0
    samples: int = 0
    samples_without_gold: int = 0

    def add(self, flags: torch.Tensor, gold: torch.Tensor, predicted: list[tuple[int, int]],
            gold_spans: list[tuple[int, int]]) -> None:
        """One sample's flags (over candidates) against its gold; a sample whose gold text was not found in its
        prompt is counted apart and left out of precision and recall."""
        if not gold_spans:
            self.samples_without_gold += 1
            return
        self.samples += 1
        self.token_tp += int((flags & gold).sum())
        self.token_fp += int((flags & ~gold).sum())
        self.token_fn += int((~flags & gold).sum())
        overlap = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
        self.spans_predicted += len(predicted)
        self.spans_predicted_correct += sum(any(overlap(p, g) for g in gold_spans) for p in predicted)
        self.spans_gold += len(gold_spans)
        self.spans_gold_found += sum(any(overlap(p, g) for p in predicted) for g in gold_spans)

    def metrics(self) -> dict:
        def prf(tp_p: int, pred: int, tp_r: int, gold: int) -> dict:
            p = tp_p / pred if pred else 0.0
            r = tp_r / gold if gold else 0.0
            return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

        return {"token": prf(self.token_tp, self.token_tp + self.token_fp, self.token_tp,
                             self.token_tp + self.token_fn),
                "span": prf(self.spans_predicted_correct, self.spans_predicted, self.spans_gold_found,
                            self.spans_gold),
                "samples": self.samples, "samples_without_gold": self.samples_without_gold,
                "counts": dict(self.__dict__)}
