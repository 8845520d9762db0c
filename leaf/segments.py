"""Response splitting: a reference response cut into 2 or 3 segments at step or sentence boundaries, or for code at
the ends of statements."""

from __future__ import annotations

import io
import re
import tokenize

_BOUNDARY = re.compile(r"\n+|(?<=[.!?])\s+")
_LINE = re.compile(r"\n+")
_CODE_BLOCK = re.compile(r"(```[^\n]*\n)(.*?)(?=```|\Z)", re.DOTALL)


def statement_ends(code: str) -> set[int] | None:
    """Character positions of the line breaks that end a Python statement (tokenize's NEWLINE: not a break inside
    brackets, a string or after a backslash); None when the code does not tokenize."""
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        ends = {starts[tok.start[0] - 1] + tok.start[1] for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                if tok.type == tokenize.NEWLINE and tok.string}
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return {e for e in ends if e < len(code) and code[e] in "\r\n"}


def code_boundaries(response: str) -> list[int]:
    """Where a code response may be cut: after a whole statement inside its code (the fenced blocks, or the whole
    text when it has none), at any line break in the prose around the blocks. Code that does not tokenize is cut at
    its line breaks."""
    blocks = [(m.start(2), m.group(2)) for m in _CODE_BLOCK.finditer(response)] if "```" in response \
        else [(0, response)]
    inside, cuts = set(), set()
    for start, code in blocks:
        inside.update(range(start, start + len(code)))
        ends = statement_ends(code)
        lines = {start + m.start() for m in _LINE.finditer(code)}
        cuts |= lines if ends is None else {start + e for e in ends} & lines
    cuts |= {m.start() for m in _LINE.finditer(response) if m.start() not in inside}
    return sorted(cuts)


def split_response(response: str, parts: int, *, code: bool = False) -> list[tuple[int, int]]:
    """Character spans of up to `parts` consecutive segments covering the response.

    Cuts go at the boundaries (line breaks, sentence ends; for code, the line breaks that end a statement) nearest
    to equal-length split points, before the whitespace, so that a token carrying its leading space (" Then") lies
    wholly inside the next segment. A response with fewer boundaries gives fewer segments (one segment: nothing to
    analyse at response level).
    """
    if parts < 2:
        return [(0, len(response))]
    found = code_boundaries(response) if code else [m.start() for m in _BOUNDARY.finditer(response)]
    cuts = sorted({c for c in found if 0 < c and response[c:].strip()})
    chosen: list[int] = []
    for k in range(1, parts):
        goal = len(response) * k / parts
        options = [c for c in cuts if c not in chosen and (not chosen or c > chosen[-1])]
        if not options:
            break
        chosen.append(min(options, key=lambda c: abs(c - goal)))
    bounds = [0, *chosen, len(response)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
