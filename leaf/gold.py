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


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def distractor_coverage(prompt: str, gold_spans: list[tuple[int, int]],
                        predicted: list[tuple[int, int]]) -> list[dict[str, bool | None]]:
    """Per gold distractor, what the predicted spans remove of it: `touched` (any character), `numbers` (every
    number it states: what misleads a math student; None when it states none) and `all` (every non-space
    character)."""
    removed = [False] * len(prompt)
    for a, b in predicted:
        for i in range(max(a, 0), min(b, len(prompt))):
            removed[i] = True

    def covered(a: int, b: int) -> bool:
        return all(removed[i] or prompt[i].isspace() for i in range(a, b))

    out = []
    for a, b in gold_spans:
        numbers = [(a + m.start(), a + m.end()) for m in _NUMBER.finditer(prompt[a:b])]
        out.append({"touched": any(removed[a:b]), "numbers": all(covered(x, y) for x, y in numbers) if numbers
                    else None, "all": covered(a, b)})
    return out


@dataclass
class DetectionCounts:
    """Micro-averaged counts over samples; token counts are over candidate tokens only. `token_*` count the
    flagged tokens, `pruned_*` the tokens inside the final spans (after growing them to words, clauses or
    sentences): what a counterfactual removes. `distractors_*` count gold distractors by what was removed of
    them (see distractor_coverage)."""

    token_tp: int = 0
    token_fp: int = 0
    token_fn: int = 0
    pruned_tp: int = 0
    pruned_fp: int = 0
    pruned_fn: int = 0
    spans_predicted: int = 0
    spans_predicted_correct: int = 0
    spans_gold: int = 0
    spans_gold_found: int = 0
    distractors: int = 0
    distractors_touched: int = 0
    distractors_with_numbers: int = 0
    distractors_numbers_removed: int = 0
    distractors_removed: int = 0
    samples: int = 0
    samples_without_gold: int = 0

    def add(self, flags: torch.Tensor, gold: torch.Tensor, predicted: list[tuple[int, int]],
            gold_spans: list[tuple[int, int]], *, pruned: torch.Tensor | None = None,
            prompt: str | None = None) -> None:
        """One sample's flags (over candidates) against its gold; a sample whose gold text was not found in its
        prompt is counted apart and left out of precision and recall. pruned: the candidates inside the final
        spans (default: the flags); prompt: the text the spans index, for the per-distractor coverage."""
        if not gold_spans:
            self.samples_without_gold += 1
            return
        self.samples += 1
        self.token_tp += int((flags & gold).sum())
        self.token_fp += int((flags & ~gold).sum())
        self.token_fn += int((~flags & gold).sum())
        pruned = flags if pruned is None else pruned
        self.pruned_tp += int((pruned & gold).sum())
        self.pruned_fp += int((pruned & ~gold).sum())
        self.pruned_fn += int((~pruned & gold).sum())
        overlap = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
        self.spans_predicted += len(predicted)
        self.spans_predicted_correct += sum(any(overlap(p, g) for g in gold_spans) for p in predicted)
        self.spans_gold += len(gold_spans)
        self.spans_gold_found += sum(any(overlap(p, g) for p in predicted) for g in gold_spans)
        if prompt is not None:
            for c in distractor_coverage(prompt, gold_spans, predicted):
                self.distractors += 1
                self.distractors_touched += c["touched"]
                self.distractors_removed += c["all"]
                if c["numbers"] is not None:
                    self.distractors_with_numbers += 1
                    self.distractors_numbers_removed += c["numbers"]

    def metrics(self) -> dict:
        def prf(tp_p: int, pred: int, tp_r: int, gold: int) -> dict:
            p = tp_p / pred if pred else 0.0
            r = tp_r / gold if gold else 0.0
            return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

        share = lambda a, b: a / b if b else None  # noqa: E731
        return {"token": prf(self.token_tp, self.token_tp + self.token_fp, self.token_tp,
                             self.token_tp + self.token_fn),
                "pruned": prf(self.pruned_tp, self.pruned_tp + self.pruned_fp, self.pruned_tp,
                              self.pruned_tp + self.pruned_fn),
                "span": prf(self.spans_predicted_correct, self.spans_predicted, self.spans_gold_found,
                            self.spans_gold),
                "distractors": {"count": self.distractors,
                                "touched": share(self.distractors_touched, self.distractors),
                                "numbers_removed": share(self.distractors_numbers_removed,
                                                         self.distractors_with_numbers),
                                "removed": share(self.distractors_removed, self.distractors)},
                "samples": self.samples, "samples_without_gold": self.samples_without_gold,
                "counts": dict(self.__dict__)}
