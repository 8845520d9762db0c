"""Flags to character spans, span pruning into counterfactual text, and score alignment across tokenizers.

Spans live in character offsets of the original text, so they mean the same thing to any tokenizer. A span is a
maximal run of flagged tokens; whitespace-only tokens between two flagged tokens join the run (they are never
flagged themselves, and with byte- or word-piece tokenizers they would otherwise split every phrase).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch


def is_whitespace(text: str) -> bool:
    return text.strip() == ""


def never_flagged(text: str) -> bool:
    """Tokens no threshold may flag (the reference's rule): whitespace or newlines only, or a lone backslash run (a
    line continuation or half an escape: removing it breaks code and LaTeX alike)."""
    return text.strip().strip("\\") == ""


def token_spans(flags: torch.Tensor, offsets: torch.Tensor, text: str,
                candidates: torch.Tensor, *, across_lines: bool = True) -> list[tuple[int, int, list[int]]]:
    """Flagged tokens -> [(char_start, char_end, token_indices)], maximal runs over the candidate tokens.

    flags, candidates: (T,) bool over the sequence; offsets (T, 2) character spans in `text`. Non-candidate tokens
    that are whitespace bridge a run (with across_lines=False, as for code, not one that holds a line break: each
    line's run is its own span, as in the reference); any other non-flagged token ends it.
    """
    spans: list[list[int]] = []
    current: list[int] = []
    pending_ws: list[int] = []
    bounds, flagged = offsets.tolist(), flags.tolist()  # Python values: a tensor element read costs microseconds
    for i, ((start, end), flag) in enumerate(zip(bounds, flagged)):
        if flag:
            current.extend(pending_ws)
            current.append(i)
            pending_ws = []
        elif current and is_whitespace(text[start:end]) and end > start and (across_lines
                                                                             or "\n" not in text[start:end]):
            pending_ws.append(i)
        elif current:
            spans.append(current)
            current, pending_ws = [], []
    if current:
        spans.append(current)
    out = []
    for tokens in spans:
        out.append((min(bounds[i][0] for i in tokens), max(bounds[i][1] for i in tokens), tokens))
    return out


def remove_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Delete character spans from text and leave clean text: no doubled or leading spaces, no space before
    punctuation, no orphaned punctuation where a whole clause was removed, no blank line where a line was."""
    pieces, last = [], 0
    for start, end in sorted(spans):
        start = max(start, last)
        pieces.append(text[last:start])
        last = max(last, end)
    pieces.append(text[last:])
    out = pieces[0]
    for piece in pieces[1:]:  # tidy each cut locally; the rest of the text stays byte for byte
        left, right = out.rstrip(" \t"), piece.lstrip(" \t")
        had_space = left != out or right != piece
        if not left:
            right = right.lstrip(_PUNCT + " \t")          # no orphaned punctuation at the start
        elif left[-1] in _PUNCT and right and right[0] in _PUNCT:  # "a, . b" / "a, , b": keep one mark, the stronger
            if right[0] in ".!?" and left[-1] in ",;:":
                left = left[:-1]
            else:
                right = right[1:].lstrip(" \t")
        elif left[-1] in "([" and right and right[0] in ")]":
            left, right = left[:-1].rstrip(" \t"), right[1:]    # an emptied bracket goes too
        if not right:
            left = left.rstrip(",;: \t")                     # a cut at the end leaves no dangling comma
        if left.endswith("\n") and right.startswith("\n"):
            out = left + right.lstrip("\n")                 # a removed paragraph or line leaves no extra blank line
        elif not left or not right or not had_space:
            out = left + right                           # text edge, or a cut inside a word
        elif right[0] in _PUNCT + "\n" or left.endswith("\n"):
            out = left + right                           # no space before punctuation or after a line break
        else:
            out = left + " " + right                     # one space between two words
    return out.strip() if len(pieces) > 1 else out


_PUNCT = ".,;:!?)"
_WORD_CHAR = re.compile(r"[^\s.,;:!?()\[\]{}\"“”]")


def expand_to_words(text: str, start: int, end: int, lo: int, hi: int) -> tuple[int, int]:
    """Widen [start, end) to whole words (runs of non-space, non-punctuation characters), within [lo, hi)."""
    while start > lo and _WORD_CHAR.match(text[start - 1]) and _WORD_CHAR.match(text[start]):
        start -= 1
    while end < hi and _WORD_CHAR.match(text[end]) and _WORD_CHAR.match(text[end - 1]):
        end += 1
    return start, end


SPAN_UNITS = ("token", "word", "clause", "sentence")
_ENDS = {"sentence": re.compile(r"[.!?]+(?=\s|$)|\n"), "clause": re.compile(r"[.!?,;:]+(?=\s|$)|\n")}


def pieces(text: str, region: tuple[int, int], unit: str) -> list[tuple[int, int]]:
    """The clauses or sentences of text[lo:hi] as character spans, in order: each from its first non-space character
    through its closing punctuation (a clause ends at , ; : . ! ? followed by a space, a sentence at . ! ?; a line
    break ends both). A decimal point or an abbreviation's dot inside a word ends nothing."""
    lo, hi = region
    out, start = [], lo
    for match in _ENDS[unit].finditer(text, lo, hi):
        out.append((start, match.end()))
        start = match.end()
    out.append((start, hi))
    trimmed = []
    for a, b in out:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            trimmed.append((a, b))
    return trimmed


def grow_spans(spans: list[tuple[int, int, list[int]]], text: str, offsets: torch.Tensor, candidates: torch.Tensor,
               region: tuple[int, int], unit: str) -> list[tuple[int, int, list[int]]]:
    """Token spans widened to whole words, clauses or sentences (`unit`), merged where they then overlap or touch;
    tokens = the candidates inside. unit "token" returns the spans unchanged."""
    if unit == "token" or not spans:
        return spans
    if unit == "word":
        wide = [expand_to_words(text, start, end, *region) for start, end, _ in spans]
    else:
        units = pieces(text, region, unit)
        wide = [(min(a for a, b in hit), max(b for a, b in hit)) if (hit := [(a, b) for a, b in units
                                                                          if a < end and start < b]) else (start, end)
                for start, end, _ in spans]
    merged: list[list[int]] = []
    for start, end in sorted(wide):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    begin = content_starts(text, offsets)
    out = []
    for start, end in merged:
        inside = candidates & (begin >= start) & (offsets[:, 1] <= end)
        out.append((start, end, inside.nonzero().flatten().tolist()))
    return out


def content_starts(text: str, offsets: torch.Tensor) -> torch.Tensor:
    """(T,) where each token's text starts once its leading whitespace is skipped: byte-level BPE tokens such as
    " Eva" begin with the space that ends the previous sentence, but belong to the next one."""
    out = []
    for a, b in offsets.tolist():
        while a < b - 1 and text[a].isspace():
            a += 1
        out.append(a)
    return torch.tensor(out, dtype=offsets.dtype).reshape(len(out))


def piece_index(text: str, offsets: torch.Tensor, tokens: torch.Tensor, units: list[tuple[int, int]]) -> torch.Tensor:
    """(N,) the index of the piece (clause / sentence) each of the tokens `tokens` (N indices) belongs to: the one
    its text (leading whitespace skipped) starts in."""
    starts = torch.tensor([a for a, _ in units])
    return (torch.searchsorted(starts, content_starts(text, offsets)[tokens], right=True) - 1).clamp(min=0)


def char_scores(scores: torch.Tensor, offsets: torch.Tensor, length: int, mask: torch.Tensor) -> torch.Tensor:
    """Spread per-token scores onto characters: (T,) -> (length,), NaN where no masked token covers a char."""
    out = torch.full((length,), float("nan"))
    for i in mask.nonzero().flatten().tolist():
        start, end = int(offsets[i, 0]), int(offsets[i, 1])
        if end > start:
            region = out[start:end]
            out[start:end] = torch.where(torch.isnan(region), scores[i], torch.maximum(region, scores[i]))
    return out


def project(scores: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, target_offsets: torch.Tensor,
            target_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Scores over one tokenization -> scores over another, through characters (max over covered characters).

    Used when teacher and student tokenize differently: the teacher's per-token scores become scores over the
    student's tokens. Identical tokenizations (the same offsets: one tokenizer, one rendering) map by identity on the
    tokens both masks hold (0 elsewhere), so that tokens sharing a character (the bytes of "é") keep their own
    scores; through characters both would take the larger.
    """
    if offsets.shape == target_offsets.shape and torch.equal(offsets, target_offsets):
        return torch.where(mask.bool() & target_mask.bool(), scores.float(), torch.zeros(()))
    chars = char_scores(scores, offsets, length, mask)
    out = torch.zeros(len(target_offsets))
    for i in target_mask.nonzero().flatten().tolist():
        start, end = int(target_offsets[i, 0]), int(target_offsets[i, 1])
        region = chars[start:end]
        region = region[~torch.isnan(region)]
        out[i] = region.max() if region.numel() else 0.0
    return out
