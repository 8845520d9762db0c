"""Stage 1 math as pure functions: min-max normalisation, the teacher-student difference, and threshold modes.

All functions take 1-D float tensors over one sample's candidate tokens (instruction tokens that are neither
whitespace nor special). A LOW Δ = ĝ_teacher - ĝ_student means the student is sensitive to the token and the
teacher is not: those are the confounder candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from leaf.errors import LeafError


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


@dataclass(frozen=True)
class ThresholdContext:
    """What a threshold mode may look at besides Δ."""

    tau: float | None = None                 # absolute mode: flag Δ <= tau
    quantile: float = 0.05                   # quantile mode: flag the lowest fraction
    count: int | None = None                 # random / ppl: how many to flag (the gradient mask's count)
    surprisal: torch.Tensor | None = None    # ppl: the student's per-token NLL over the same candidates
    generator: torch.Generator | None = None  # random: seeded per sample


@dataclass(frozen=True)
class Flags:
    mask: torch.Tensor   # (N,) bool over the candidates
    threshold: float | None  # the τ actually applied (None for count-based modes)


def _iqr(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The seed's dynamic threshold: τ = Q1 - 1.5·IQR; flag Δ < τ (low outliers)."""
    if d.numel() < 4:
        return Flags(torch.zeros_like(d, dtype=torch.bool), None)
    q1, q3 = torch.quantile(d, 0.25).item(), torch.quantile(d, 0.75).item()
    tau = q1 - 1.5 * (q3 - q1)
    return Flags(d < tau, tau)


def _absolute(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The paper's fixed threshold: flag Δ <= τ."""
    if ctx.tau is None:
        raise LeafError("Threshold mode 'absolute' needs --tau (the paper: 0.10 instruction / 0.15 response level "
                        "for a 1B student).")
    return Flags(d <= ctx.tau, ctx.tau)


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros_like(values, dtype=torch.bool)
    if count > 0:
        mask[torch.argsort(values, stable=True)[:count]] = True
    return mask


def _quantile(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The released code's fixed ratio: flag the lowest ceil(p·N) tokens."""
    count = min(d.numel(), math.ceil(ctx.quantile * d.numel()))
    mask = _lowest(d, count)
    return Flags(mask, float(d[mask].max()) if mask.any() else None)


def _random(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Ablation baseline: as many tokens as the gradient mask flags, at random positions."""
    count = min(d.numel(), ctx.count or 0)
    mask = torch.zeros_like(d, dtype=torch.bool)
    mask[torch.randperm(d.numel(), generator=ctx.generator)[:count]] = True
    return Flags(mask, None)


def _ppl(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Ablation baseline: the tokens the student finds most surprising, as many as the gradient mask flags."""
    if ctx.surprisal is None:
        raise LeafError("Threshold mode 'ppl' needs the student's per-token surprisal.")
    count = min(d.numel(), ctx.count or 0)
    return Flags(_lowest(-ctx.surprisal.float(), count), None)


THRESHOLDS: dict[str, Callable[[torch.Tensor, ThresholdContext], Flags]] = {
    "iqr": _iqr, "absolute": _absolute, "quantile": _quantile, "random": _random, "ppl": _ppl,
}
GRADIENT_MODES = ("iqr", "absolute", "quantile")
BASELINE_MODES = ("random", "ppl")


def list_thresholds() -> list[str]:
    return list(THRESHOLDS)


def get_threshold(name: str) -> Callable[[torch.Tensor, ThresholdContext], Flags]:
    if name not in THRESHOLDS:
        raise LeafError(f"Unknown threshold mode {name!r}. Available: {', '.join(THRESHOLDS)}.")
    return THRESHOLDS[name]


def flag(mode: str, d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Apply threshold `mode` to Δ over the candidates. A constant Δ (e.g. teacher = student: no token is more
    student-sensitive than the teacher's reading says) has no low tail, so no gradient mode flags anything (a fixed
    ratio or an absolute τ would otherwise flag the first tokens or all of them), and the baselines, which copy a
    gradient mode's count, flag nothing either."""
    threshold = get_threshold(mode)
    d = d.float()
    if mode in GRADIENT_MODES and (d.numel() == 0 or bool(d.max() == d.min())):
        return Flags(torch.zeros_like(d, dtype=torch.bool), None)
    return threshold(d, ctx)
