"""The threshold modes of `leaf analyze`: which tokens of one unit a mode flags, and what it needs to decide.

A mode is one entry of THRESHOLDS: its rule, a function of Δ over the unit's candidate tokens, (N,), and a
ThresholdContext, and `needs`, the context fields it reads. Everything else reads the registry: the choices of
`--threshold` and `--baseline-count`, the checks of AnalyzeConfig ("--threshold absolute needs --tau"), the
contexts `leaf.analyze.detect` hands each mode, and the detection table. Adding a mode is one entry here.

Δ is LOW where the student is sensitive to a token and the teacher is not: the confounder candidates. The rules
use tensor methods only (torch itself is imported where a rule needs a function of it), so that the command line
and the config checks read this table without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from leaf.errors import LeafError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ThresholdContext:
    """What a threshold mode may look at besides Δ; a mode is handed the fields its registry entry needs."""

    tau: float | None = None                 # --tau: absolute mode flags Δ <= tau
    quantile: float = 0.05                   # --quantile: quantile mode flags the lowest fraction
    count: int | None = None                 # how many the --baseline-count gradient mode flags (the baselines)
    surprisal: torch.Tensor | None = None    # the student's per-token NLL over the same candidates, (N,)
    generator: torch.Generator | None = None  # seeded per sample


@dataclass(frozen=True)
class Flags:
    mask: torch.Tensor        # (N,) bool over the candidates
    threshold: float | None   # the τ actually applied (None for count-based modes)


# needs that are `leaf analyze` options without a default: the config check says "--threshold M needs --tau" when
# one is not given (--quantile has one per --domain)
OPTIONS = ("tau",)


@dataclass(frozen=True)
class ThresholdMode:
    rule: Callable[[torch.Tensor, ThresholdContext], Flags]
    needs: tuple[str, ...] = ()  # ThresholdContext fields the rule reads; "count" makes it a baseline

    def __post_init__(self) -> None:
        unknown = set(self.needs) - {f.name for f in fields(ThresholdContext)}
        if unknown:
            raise ValueError(f"{self.rule.__name__} needs {sorted(unknown)}: not fields of ThresholdContext.")

    @property
    def baseline(self) -> bool:
        """A control: it flags as many tokens as a gradient mode does, chosen without Δ."""
        return "count" in self.needs

    def can_run(self, ctx: ThresholdContext) -> bool:
        """Whether ctx holds everything the rule reads (no --tau, or no surprisal: the mode is left out)."""
        return all(getattr(ctx, need) is not None for need in self.needs)


def _none(d: torch.Tensor) -> torch.Tensor:
    return d.new_zeros(d.shape, dtype=bool)


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    mask = _none(values)
    if count > 0:
        mask[values.argsort(stable=True)[:count]] = True
    return mask


def _iqr(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The seed's dynamic threshold: τ = Q1 - 1.5·IQR; flag Δ < τ (low outliers)."""
    if d.numel() < 4:
        return Flags(_none(d), None)
    q1, q3 = d.quantile(0.25).item(), d.quantile(0.75).item()
    tau = q1 - 1.5 * (q3 - q1)
    return Flags(d < tau, tau)


def _absolute(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The paper's fixed threshold: flag Δ <= τ."""
    if ctx.tau is None:
        raise LeafError("Threshold mode 'absolute' needs --tau (the paper: 0.10 instruction / 0.15 response level "
                        "for a 1B student).")
    return Flags(d <= ctx.tau, ctx.tau)


def _quantile(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """leaf's fixed ratio: flag exactly the lowest ceil(p·N) candidates (ties broken by position). The released
    scripts flag a ratio too, by another rule (`released`) over another range (docs/analyze.md: "Threshold modes")."""
    count = min(d.numel(), math.ceil(ctx.quantile * d.numel()))
    mask = _lowest(d, count)
    return Flags(mask, float(d[mask].max()) if mask.any() else None)


def _released(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """The released scripts' threshold rule (remove_confounding_tokens_{math,code}.py): τ = min(sorted(Δ)[int(p·N)],
    0.5), flag Δ <= τ. Ties at τ are all flagged, so it may flag more than p·N tokens; the cap binds when the p-th
    value is above 0.5. Only the rule: leaf applies it to its own Δ over its own candidates, which differ from the
    released detection's (docs/analyze.md: "Threshold modes" lists every difference and what they do to the flags)."""
    tau = min(float(d.sort().values[min(int(ctx.quantile * d.numel()), d.numel() - 1)]), 0.5)
    return Flags(d <= tau, tau)


def _random(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Ablation baseline: as many tokens as the gradient mask flags, at random positions."""
    import torch

    count = min(d.numel(), ctx.count or 0)
    mask = _none(d)
    mask[torch.randperm(d.numel(), generator=ctx.generator)[:count]] = True
    return Flags(mask, None)


def _ppl(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Ablation baseline: the tokens the student finds most surprising, as many as the gradient mask flags."""
    if ctx.surprisal is None:
        raise LeafError("Threshold mode 'ppl' needs the student's per-token surprisal.")
    count = min(d.numel(), ctx.count or 0)
    return Flags(_lowest(-ctx.surprisal.float(), count), None)


THRESHOLDS: dict[str, ThresholdMode] = {
    "iqr": ThresholdMode(_iqr),
    "absolute": ThresholdMode(_absolute, needs=("tau",)),
    "quantile": ThresholdMode(_quantile, needs=("quantile",)),
    "released": ThresholdMode(_released, needs=("quantile",)),
    "random": ThresholdMode(_random, needs=("count", "generator")),
    "ppl": ThresholdMode(_ppl, needs=("count", "surprisal")),
}


def list_thresholds() -> list[str]:
    return list(THRESHOLDS)


def gradient_modes() -> list[str]:
    """The modes that decide from Δ: the ones whose flag count a baseline may copy (--baseline-count)."""
    return [name for name, mode in THRESHOLDS.items() if not mode.baseline]


def baseline_modes() -> list[str]:
    return [name for name, mode in THRESHOLDS.items() if mode.baseline]


def get_threshold(name: str) -> ThresholdMode:
    if name not in THRESHOLDS:
        raise LeafError(f"Unknown threshold mode {name!r}. Available: {', '.join(THRESHOLDS)}.")
    return THRESHOLDS[name]


def options_given(option: str, name: str, config) -> tuple[bool, str]:
    """A config check: whether `config` sets every `leaf analyze` option that mode `name` (the value of `option`)
    needs, and the message that names the ones it lacks ("--threshold absolute needs --tau.")."""
    needs = THRESHOLDS[name].needs if name in THRESHOLDS else ()
    missing = [f"--{need}" for need in needs if need in OPTIONS and getattr(config, need) is None]
    return not missing, f"{option} {name} needs {' and '.join(missing)}."


def flag(name: str, d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """Apply threshold mode `name` to Δ over the candidates. A constant Δ (e.g. teacher = student: no token is more
    student-sensitive than the teacher's reading says) has no low tail, so no gradient mode flags anything (a fixed
    ratio or an absolute τ would otherwise flag the first tokens or all of them), and the baselines, which copy a
    gradient mode's count, flag nothing either."""
    mode = get_threshold(name)
    d = d.float()
    if not mode.baseline and (d.numel() == 0 or bool(d.max() == d.min())):
        return Flags(_none(d), None)
    return mode.rule(d, ctx)
