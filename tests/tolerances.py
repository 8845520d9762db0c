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


# Two float32 passes of the same tiny test model (hidden 128, 2 layers, 4 heads, intermediate 256, vocab <= 408) that
# differ only in batching, padding or kernel (leaf's hooked pass vs a plain eager reference): every value is a chain
# of about six dot products of at most 256 terms (projections, attention, MLP, head), each off by at most 256·eps of
# its absolute terms (≈ 3e-5, Higham) and typically sqrt(256)·eps (≈ 2e-6). RTOL bounds the chain's relative error
# with that typical rate over six stages and a 10x margin; ATOL covers values that cancel to near zero (a gradient
# component, an attention weight on a masked key) at 1e-4 of the largest values in play (≈ 0.1).
MODEL_RTOL = 6 * 16 * EPS32 * 10      # ≈ 1.1e-4
MODEL_ATOL = 1e-4 * 0.1               # 1e-5


def kd_atol(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0, eps: float = EPS32) -> float:
    """How far two float32 evaluations of the KD loss (KL(p_T || p_S)·t², averaged over masked positions) on these
    logits may lie apart when the logits come from passes in other batch layouts: each logit may move by 16 ulps of
    the largest |logit| (a few layers of dot products), and a position's term by t·(2 + Σ p_T·|log p_T/p_S - KL|)
    times that (|∂KL/∂z_S| sums to 2/t, |∂KL/∂z_T| to Σ p_T·|log p_T/p_S - KL| / t); a mean moves by no more than
    its largest term. mask: (B, T) bool over the predicting positions (logit t predicts token t + 1). eps: the unit
    of the passes' rounding (float32's; torch.finfo(torch.bfloat16).eps when the passes run in bf16)."""
    worst = 0.0
    for s, t, m in zip(student_logits, teacher_logits, mask):
        rows = m.nonzero().flatten()
        if not len(rows):
            continue
        zs, zt = s[rows].double(), t[rows, : s.shape[-1]].double()
        log_ps, log_pt = (zs / temperature).log_softmax(-1), (zt / temperature).log_softmax(-1)
        p_t = log_pt.exp()
        kl = (p_t * (log_pt - log_ps)).sum(-1, keepdim=True)
        sensitivity = 2 + (p_t * (log_pt - log_ps - kl).abs()).sum(-1)
        size = torch.maximum(zs.abs().amax(-1), zt.abs().amax(-1))
        worst = max(worst, float((temperature * sensitivity * 16 * eps * size).max()))
    return worst


def logprob_atol(layers: int, width: int, logit_scale: float) -> float:
    """How far two float32 forward passes of one model through different kernels (HF's and vLLM's CPU attention
    and matmuls) may put a log-prob apart. Each of a layer's three stages (attention projections, attention, MLP)
    sums at most `width` products, off by about sqrt(width)·eps of its absolute terms (rounding errors in random
    directions; Higham's worst case width·eps is far from what blocked kernels reach); the stages' errors add
    through the residual stream like a random walk, sqrt(3·layers) of them; a 10x margin as in MODEL_RTOL. That
    relative error times the largest |logit| bounds a logit's move, and a log-prob z_i - logsumexp(z) moves by at
    most twice a logit's."""
    relative = 10 * (3 * layers) ** 0.5 * width ** 0.5 * EPS32
    return 2 * relative * logit_scale
