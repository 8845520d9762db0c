"""Tolerances derived from the computation, not from what one machine printed (CI runs on AVX2 or AVX-512 CPUs with
1 or 2 threads, whose kernels add float32 terms in other orders).

Recursive or blocked summation of n float32 terms has |error| <= n·eps·Σ|terms| (Higham, Accuracy and Stability of
Numerical Algorithms, §4.2); two evaluations in different orders differ by at most twice that. A KL divergence is a
sum of V terms p·(log p - log q) whose logarithms carry a few ulps each, so two float32 evaluations of it may differ
by kl_atol(...): compare KLs (small differences of large terms) with that absolute bound, never a relative one."""

import torch

EPS32 = torch.finfo(torch.float32).eps   # 2^-23 ≈ 1.19e-7


def sum_atol(terms: torch.Tensor) -> float:
    """How far two float32 sums of these terms (in any order) may lie apart: 2·n·eps·Σ|terms|."""
    terms = terms.double().flatten()
    return float(2 * terms.numel() * EPS32 * terms.abs().sum())


def kl_atol(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """Two float32 evaluations of KL(p || q) = Σ p·(log p - log q) from these log-probabilities (last dim the
    vocabulary; other dims summed or averaged alike): the summation bound over the terms, plus a few ulps of each
    logarithm carried through p (4 ulps: a log-softmax's subtraction and its log-sum-exp)."""
    p_log, q_log = p_log.double(), q_log.double()
    p = p_log.exp()
    terms = p * (p_log - q_log)
    rounding = float((p * 4 * EPS32 * (p_log.abs() + q_log.abs())).sum())
    return sum_atol(terms) + rounding
