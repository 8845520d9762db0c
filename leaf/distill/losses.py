"""Stage 2 loss math as pure functions over (student logits, teacher logits, mask): KD divergences, the LeaF hybrid
loss, λ schedules, and the top-k teacher cache with its tail mass.

Shapes: B batch, T positions, V vocabulary, N selected positions, k cached top-k entries.

Positions: logit t predicts token t + 1, so a response-token mask becomes a logit mask by shifting it left
(`logit_mask`): the first response token is predicted from the last prompt position.

Every divergence is per position over the vocabulary, in float32, computed over the selected positions in chunks
so that a 128k vocabulary never holds a float32 (B, T, V) copy, scaled by t² for temperature t, and averaged over
the selected positions of each sample.
"""

from __future__ import annotations

import math

import torch

from leaf.distill.divergences import (DIVERGENCES, Divergence, _kl, forward_kl, get_divergence,  # noqa: F401
                                      jsd, list_divergences, reverse_kl)  # the registry, re-exported
from leaf.errors import LeafError


def logit_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """Response-token mask (B, T) -> logit mask (B, T): position t is selected when token t + 1 is a target."""
    out = torch.zeros_like(token_mask, dtype=torch.bool)
    out[:, :-1] = token_mask[:, 1:].bool()
    return out


def per_sample_mean(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of `values` (N,) per owner: rows (N,) give each value's sample in [0, batch); (batch,), 0 where none."""
    total = torch.zeros(batch, dtype=torch.float32, device=values.device).index_add(0, rows, values)
    count = torch.zeros(batch, dtype=torch.float32, device=values.device).index_add(0, rows, torch.ones_like(values))
    return total / count.clamp(min=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
            divergence: Divergence = forward_kl, temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """Per-sample distillation loss: mean over the sample's selected logit positions of D(p_T || p_S) · t².

    student_logits (B, T, V); teacher_logits (B, T, V') with V' >= V (a padded teacher is cut to the shared ids);
    mask (B, T) bool over logit positions (see `logit_mask`). Returns (B,) float32; 0 for a sample with no position.
    """
    vocab = student_logits.shape[-1]
    rows, cols = mask.nonzero(as_tuple=True)
    values = []
    for start in range(0, rows.numel(), chunk_size):
        r, c = rows[start: start + chunk_size], cols[start: start + chunk_size]
        logp_s = (student_logits[r, c].float() / temperature).log_softmax(-1)            # (n, V)
        logp_t = (teacher_logits[r, c, :vocab].float() / temperature).log_softmax(-1)   # (n, V)
        values.append(divergence(logp_t, logp_s))
    per_position = torch.cat(values) if values else student_logits.new_zeros(0, dtype=torch.float32)
    return per_sample_mean(per_position, rows, mask.shape[0]) * temperature ** 2


def teacher_topk(teacher_logits: torch.Tensor, mask: torch.Tensor, k: int, *, temperature: float = 1.0,
                 vocab: int | None = None, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """What the teacher cache stores for the selected positions: top-k log-probs (N, k) float32 and ids (N, k)."""
    vocab = vocab or teacher_logits.shape[-1]
    rows, cols = mask.nonzero(as_tuple=True)
    values, indices = [], []
    for start in range(0, rows.numel(), chunk_size):
        r, c = rows[start: start + chunk_size], cols[start: start + chunk_size]
        logp = (teacher_logits[r, c, :vocab].float() / temperature).log_softmax(-1)
        top = logp.topk(min(k, vocab), dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def _with_tail(logp_top: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of k outcomes -> (N, k + 1), the remaining mass as one more outcome. The tail is floored at
    1e-20 so that k = V (no tail) keeps finite values and gradients."""
    covered = torch.logsumexp(logp_top, -1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(covered)).clamp(min=1e-20))      # log(1 - covered mass)
    return torch.cat([logp_top, tail], -1)


def kd_loss_from_cache(student_logits: torch.Tensor, mask: torch.Tensor, top_logp: torch.Tensor,
                       top_ids: torch.Tensor, *, divergence: Divergence = forward_kl, temperature: float = 1.0,
                       chunk_size: int = 1024) -> torch.Tensor:
    """kd_loss against a top-k teacher cache: both distributions bucketed into the k cached ids plus one tail bucket
    (all other ids), so the tail mass counts; with k = V it equals the online loss.

    top_logp, top_ids: (N, k) for the mask's selected positions in row-major order (as `teacher_topk` writes them).
    """
    rows, cols = mask.nonzero(as_tuple=True)
    if top_logp.shape[0] != rows.numel():
        raise LeafError(f"The teacher cache has {top_logp.shape[0]} positions for this batch but the mask selects "
                        f"{rows.numel()}: the cache was written for other data or another mask; rebuild it.")
    values = []
    for start in range(0, rows.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        logp_s = (student_logits[rows[sl], cols[sl]].float() / temperature).log_softmax(-1)   # (n, V)
        s_top = logp_s.gather(-1, top_ids[sl])
        values.append(divergence(_with_tail(top_logp[sl].float()), _with_tail(s_top)))
    per_position = torch.cat(values) if values else student_logits.new_zeros(0, dtype=torch.float32)
    return per_sample_mean(per_position, rows, mask.shape[0]) * temperature ** 2


def hybrid_loss(original: torch.Tensor, counterfactual: torch.Tensor, has_counterfactual: torch.Tensor,
                lam: float) -> torch.Tensor:
    """LeaF: λ·D(X) + (1-λ)·D(X\\A) per sample, averaged over the batch; samples without a counterfactual use
    D(X) alone. original, counterfactual (B,) per-sample losses; has_counterfactual (B,) bool."""
    mixed = lam * original + (1 - lam) * torch.where(has_counterfactual, counterfactual, original)
    return mixed.mean()


def lambda_at(spec: str | float, step: int, total_steps: int) -> float:
    """λ at a step: a constant ("0.8" or 0.8), "linear:START:END" (the seed's linear:0.8:0.5) or
    "cosine:START:END", going from START at step 0 to END at the last step."""
    if isinstance(spec, (int, float)):
        return float(spec)
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            return float(parts[0])
        kind, start, end = parts[0], float(parts[1]), float(parts[2])
    except (ValueError, IndexError):
        raise LeafError(f"Bad λ schedule {spec!r}: use a number, linear:START:END or cosine:START:END.") from None
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    raise LeafError(f"Unknown λ schedule {kind!r} in {spec!r}: use linear:START:END or cosine:START:END.")
