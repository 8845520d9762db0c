"""The divergences of `leaf distill --divergence`, and their registry.

A divergence maps (log p_T, log p_S), float32 log-probabilities (N, V), to per-row values (N,). DIVERGENCES is the
one table: `--divergence` offers its names, DistillConfig checks against it and the trainer builds from it, so a
new divergence is one entry here. torch is imported inside the functions, so that the command line reads the names
without loading it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from leaf.errors import LeafError

if TYPE_CHECKING:
    import torch

# divergence(log p_T, log p_S) over the last dim -> per-row values; inputs (N, V) float32 log-probabilities.
Divergence = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, with 0 · log 0 = 0."""
    import torch

    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def forward_kl(logp_t: torch.Tensor, logp_s: torch.Tensor) -> torch.Tensor:
    """KL(p_T || p_S): mean-seeking, the paper's default."""
    return _kl(logp_t, logp_s)


def reverse_kl(logp_t: torch.Tensor, logp_s: torch.Tensor) -> torch.Tensor:
    """KL(p_S || p_T): mode-seeking."""
    return _kl(logp_s, logp_t)


def jsd(beta: float) -> Divergence:
    """Generalised JSD: β·KL(p_T || m) + (1-β)·KL(p_S || m), m = β·p_T + (1-β)·p_S (trl's convention).
    JSD(β)/β -> KL(p_T || p_S) as β -> 0 and JSD(β)/(1-β) -> KL(p_S || p_T) as β -> 1."""
    if not 0 < beta < 1:
        raise LeafError(f"JSD beta must be in (0, 1), got {beta}; use forward_kl (β -> 0) or reverse_kl (β -> 1).")

    def divergence(logp_t: torch.Tensor, logp_s: torch.Tensor) -> torch.Tensor:
        import torch

        logm = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1 - beta)]), 0)
        return beta * _kl(logp_t, logm) + (1 - beta) * _kl(logp_s, logm)

    return divergence


# name -> factory of the divergence from --jsd-beta (the KLs ignore it)
DIVERGENCES: dict[str, Callable[..., Divergence]] = {
    "forward_kl": lambda beta=None: forward_kl,
    "reverse_kl": lambda beta=None: reverse_kl,
    "jsd": lambda beta=0.5: jsd(beta),
}


def list_divergences() -> list[str]:
    return list(DIVERGENCES)


def get_divergence(name: str, beta: float = 0.5) -> Divergence:
    if name not in DIVERGENCES:
        raise LeafError(f"Unknown divergence {name!r}. Available: {', '.join(DIVERGENCES)}.")
    return DIVERGENCES[name](beta)
