"""Token positions of an original text X matched to those of its counterfactual X\\A, through characters.

X\\A is X with spans removed (and the cut tidied: a space or a comma may go with it). A token of X has a partner in
X\\A when its characters survive unchanged and X\\A has a token covering exactly those characters. Tokens inside a
pruned span have no partner by construction ("pruned"); tokens next to a cut whose tokenization changed (a merged
space, a split word) have none either ("changed"). Patching leaves unpartnered positions alone, and maps show them
as NaN.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Alignment:
    """pairs[k] = (position in X, position in X\\A); pruned / changed: positions of X without a partner."""

    pairs: list[tuple[int, int]]
    pruned: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)

    @classmethod
    def identity(cls, length: int) -> Alignment:
        """Same-length inputs matched position by position (e.g. a one-token substitution)."""
        return cls(pairs=[(i, i) for i in range(length)])

    def reversed(self) -> Alignment:
        """X\\A -> X (for patching the original's activations into the counterfactual run)."""
        return Alignment(pairs=[(b, a) for a, b in self.pairs])

    def partner(self) -> dict[int, int]:
        return dict(self.pairs)

    def to_json(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "pruned": self.pruned, "changed": self.changed}


def char_map(original: str, counterfactual: str, removed: Sequence[tuple[int, int]] = ()) -> list[int | None]:
    """For each character of `original`, its index in `counterfactual`, or None where it was removed or changed.

    The removed spans are taken out first, so what is left differs from the counterfactual only where the cut was
    tidied (a space, a comma): the character diff then has nothing ambiguous to choose (a "." of a removed
    sentence never stands in for the "." before it)."""
    out: list[int | None] = [None] * len(original)
    kept = [i for i in range(len(original)) if not any(a <= i < b for a, b in removed)]
    rest = "".join(original[i] for i in kept)
    matcher = difflib.SequenceMatcher(None, rest, counterfactual, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            out[kept[block.a + k]] = block.b + k
    return out


def align_tokens(original: str, original_offsets: torch.Tensor, counterfactual: str,
                 counterfactual_offsets: torch.Tensor,
                 pruned_spans: Sequence[tuple[int, int]] = ()) -> Alignment:
    """Match token positions of X (original, with its offsets) to X\\A's. pruned_spans: character spans of X that
    were removed (tokens overlapping them are reported as pruned, not as changed)."""
    chars = char_map(original, counterfactual, pruned_spans)
    by_span = {(int(s), int(e)): j for j, (s, e) in enumerate(counterfactual_offsets.tolist()) if e > s}
    pairs, pruned, changed = [], [], []
    for i, (start, end) in enumerate(original_offsets.tolist()):
        if end <= start:
            changed.append(i)
            continue
        if any(start < b and a < end for a, b in pruned_spans):
            pruned.append(i)
            continue
        mapped = chars[start:end]
        ok = all(m is not None for m in mapped) and mapped[-1] - mapped[0] == end - start - 1
        j = by_span.get((mapped[0], mapped[-1] + 1)) if ok else None
        if j is None:
            changed.append(i)
        else:
            pairs.append((i, j))
    return Alignment(pairs=pairs, pruned=pruned, changed=changed)
