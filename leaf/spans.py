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


def token_spans(flags: torch.Tensor, offsets: torch.Tensor, text: str,
                candidates: torch.Tensor) -> list[tuple[int, int, list[int]]]:
    """Flagged tokens -> [(char_start, char_end, token_indices)], maximal runs over the candidate tokens.

    flags, candidates: (T,) bool over the sequence; offsets (T, 2) character spans in `text`. Non-candidate tokens
    that are whitespace bridge a run; any other non-flagged token ends it.
    """
    spans: list[tuple[int, int, list[int]]] = []
    current: list[int] = []
    pending_ws: list[int] = []
    for i in range(len(flags)):
        start, end = int(offsets[i, 0]), int(offsets[i, 1])
        if flags[i]:
            current.extend(pending_ws)
            current.append(i)
            pending_ws = []
        elif current and is_whitespace(text[start:end]) and end > start:
            pending_ws.append(i)
        elif current:
            spans.append(current)
            current, pending_ws = [], []
    if current:
        spans.append(current)
    out = []
    for tokens in spans:
        start = min(int(offsets[i, 0]) for i in tokens)
        end = max(int(offsets[i, 1]) for i in tokens)
        out.append((start, end, tokens))
    return out


def remove_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Delete character spans from text and leave clean text: no doubled or leading spaces, no space before
    punctuation, no orphaned punctuation where a whole clause was removed."""
    pieces, last = [], 0
    for start, end in sorted(spans):
        if start < last:
            start = last
        pieces.append(text[last:start])
        last = max(last, end)
    pieces.append(text[last:])
    out = "\u0000".join(pieces)  # a marker where something was cut, tidied below
    out = re.sub(r"[ \t]*\u0000[ \t]*", "\u0000", out)
    out = re.sub(r"\n\u0000+\n", "\n", out)                    # a removed line leaves no blank line
    # at a cut: keep one space between words, none before punctuation or a line end / text end
    out = re.sub(r"(?<=\S)\u0000+(?=[A-Za-z0-9$(\"'])", " ", out)
    out = out.replace("\u0000", "")
    out = re.sub(r"[ \t]{2,}", " ", out)
    out = re.sub(r"[ \t]+([.,;:!?])", r"\1", out)
    out = re.sub(r"([.,;:!?])(?:\s*[.,;:!?])+", r"\1", out)   # "a.. b" / "a, . b" -> keep the first mark
    out = re.sub(r"^[ \t]*[.,;:!?][ \t]*", "", out)            # text may not start with orphaned punctuation
    out = re.sub(r"(?m)^[ \t]+|[ \t]+$", "", out)
    return out


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
    student's tokens. With identical tokenizations it is the identity on the masked tokens.
    """
    chars = char_scores(scores, offsets, length, mask)
    out = torch.zeros(len(target_offsets))
    for i in target_mask.nonzero().flatten().tolist():
        start, end = int(target_offsets[i, 0]), int(target_offsets[i, 1])
        region = chars[start:end]
        region = region[~torch.isnan(region)]
        out[i] = region.max() if region.numel() else 0.0
    return out
