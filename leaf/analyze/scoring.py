"""Stage 1 math as pure functions: min-max normalisation, the teacher-student difference Δ, and group means. The
threshold modes that flag tokens from Δ are in `leaf.analyze.thresholds`.

All functions take 1-D float tensors over one sample's candidate tokens (instruction tokens that are neither
whitespace nor special). A LOW Δ = ĝ_teacher - ĝ_student means the student is sensitive to the token and the
teacher is not: those are the confounder candidates.
"""

from __future__ import annotations

import torch


def minmax(values: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) in float32; a constant (or single-element) vector maps to zeros, never NaN."""
    values = values.float()
    if values.numel() == 0:
        return values
    lo, hi = values.min(), values.max()
    if not torch.isfinite(hi - lo) or hi - lo <= 0:
        return torch.zeros_like(values)
    return (values - lo) / (hi - lo)


def delta(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Normalised Δ: minmax(minmax(g_T) - minmax(g_S)), in [0, 1]."""
    return minmax(minmax(teacher) - minmax(student))


def group_mean(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (N,) per group id in `groups` (N,), ids 0..G-1 -> (G,); a group without members gets the
    mean of the rest (so that it is never an outlier), or 0. Used to decide over clauses or sentences."""
    count = int(groups.max()) + 1 if groups.numel() else 0
    values = values.float()
    total = torch.zeros(count).index_add(0, groups, values)
    members = torch.zeros(count).index_add(0, groups, torch.ones_like(values))
    out = total / members.clamp(min=1)
    empty = members == 0
    if empty.any():
        out[empty] = out[~empty].mean() if (~empty).any() else 0.0
    return out
