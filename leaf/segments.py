"""Response splitting: a reference response cut into 2 or 3 segments at step or sentence boundaries."""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"\n+|(?<=[.!?])\s+")


def split_response(response: str, parts: int) -> list[tuple[int, int]]:
    """Character spans of up to `parts` consecutive segments covering the response.

    Cuts go at the boundaries (line breaks, sentence ends) nearest to equal-length split points, before the
    whitespace, so that a token carrying its leading space (" Then") lies wholly inside the next segment. A response
    with fewer boundaries gives fewer segments (one segment: nothing to analyse at response level).
    """
    if parts < 2:
        return [(0, len(response))]
    cuts = sorted({m.start() for m in _BOUNDARY.finditer(response) if 0 < m.start() and m.end() < len(response)})
    chosen: list[int] = []
    for k in range(1, parts):
        goal = len(response) * k / parts
        options = [c for c in cuts if c not in chosen and (not chosen or c > chosen[-1])]
        if not options:
            break
        chosen.append(min(options, key=lambda c: abs(c - goal)))
    bounds = [0, *chosen, len(response)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
