"""Per-head attention focus: which heads read the confounders.

For each layer and head, of the attention mass that the query tokens (the response) put on the instruction, the
share that lands on the confounder spans (a subset of the instruction). The attention-sink token (position 0) is
excluded from both. Compare a student before and after distillation to see which heads stopped reading the
distractor; compare with the teacher to see which never did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from leaf.errors import LeafError
from leaf.hooks.loading import HookedModel
from leaf.hooks.tracing import attention_mass


def head_focus(model: HookedModel, samples: Sequence, query_mask: Sequence, instruction_mask: Sequence,
               confounder_mask: Sequence, *, layers: Sequence[int] | None = None,
               batch_size: int = 8) -> list[torch.Tensor]:
    """One (L, H) tensor per sample: share of query->instruction attention on the confounders (NaN for a head that
    puts no mass on the instruction). The confounder tokens must lie inside the instruction."""
    for i, (instr, conf) in enumerate(zip(instruction_mask, confounder_mask)):
        instr, conf = torch.as_tensor(instr).bool(), torch.as_tensor(conf).bool()
        if (conf & ~instr).any():
            raise LeafError(f"confounder_mask of sample {i} marks tokens outside its instruction_mask.")
    masses = attention_mass(model, samples, query_mask, {"instruction": instruction_mask,
                                                         "confounder": confounder_mask},
                            layers=layers, exclude_sink=True, batch_size=batch_size)
    out = []
    for mass in masses:
        instr, conf = mass["instruction"], mass["confounder"]
        out.append(torch.where(instr > 0, conf / instr.clamp(min=1e-12), torch.full_like(instr, float("nan"))))
    return out


def mean_focus(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean (L, H) map over samples, ignoring NaN."""
    stack = torch.stack(list(maps))
    return torch.nanmean(stack, 0)
