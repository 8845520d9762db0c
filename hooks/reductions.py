"""The math of the built-in hooks, as pure functions on tensors (tested against autograd and by hand).

Shapes: B batch, T tokens, V vocabulary, D hidden size, H heads, S key sets.
"""

from __future__ import annotations

import torch

NORMS = ("l2", "l1")
SALIENCY_METHODS = ("grad", "grad_x_input")


def mean_nll(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean next-token NLL over the target tokens: (B, T, V), (B, T), (B, T) bool -> (B,) float32.

    target_mask marks the tokens to predict; logit t predicts token t + 1, so token t's loss uses logits[t - 1].
    log-softmax runs in float32 on the selected rows only, never on a float32 copy of the whole (B, T, V).
    """
    shifted = target_mask[:, 1:]                                      # (B, T-1): token t+1 is a target
    rows = logits[:, :-1][shifted].float()                            # (N, V)
    targets = input_ids[:, 1:][shifted]                               # (N,)
    nll = -rows.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    sample = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(shifted)[shifted]
    total = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device).index_add(0, sample, nll)
    return total / shifted.sum(-1).clamp(min=1)


def logit_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """The logit positions a batch's loss needs: t where token t + 1 is a target in any row -> (U,) sorted.

    Pass them to the model as `logits_to_keep` (every transformers causal LM takes it): the LM head then runs on U
    positions instead of T, so neither the (B, T, V) logits nor their gradient is ever materialised."""
    return target_mask[:, 1:].any(0).nonzero().flatten()


def mean_nll_at(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
    """mean_nll on logits kept at `positions` only: logits (B, U, V) with logits[:, j] the full logits at
    positions[j]; input_ids, target_mask (B, T) -> (B,) float32. Equals mean_nll on the full logits."""
    predicts = target_mask[:, positions + 1]                          # (B, U): the kept position's next token counts
    rows = logits[predicts].float()                                   # (N, V)
    targets = input_ids[:, positions + 1][predicts]                   # (N,)
    nll = -rows.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    sample = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(predicts)[predicts]
    total = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device).index_add(0, sample, nll)
    return total / predicts.sum(-1).clamp(min=1)


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Surprisal of every token given its prefix: (B, T, V), (B, T) -> (B, T) float32, 0 at position 0.

    `chunk` positions at a time, so the float32 log-softmax never spans more than (chunk, V).
    """
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):
        for start in range(0, logits.shape[1] - 1, chunk):
            end = min(start + chunk, logits.shape[1] - 1)
            logp = logits[row, start:end].float().log_softmax(-1)                       # (chunk, V)
            out[row, start + 1: end + 1] = -logp.gather(-1, input_ids[row, start + 1: end + 1, None]).squeeze(-1)
    return out


def token_scores(grad: torch.Tensor, embeds: torch.Tensor | None = None, *, norm: str = "l2",
                 method: str = "grad") -> torch.Tensor:
    """Per-token sensitivity from input-embedding gradients: (B, T, D) -> (B, T) float32.

    method "grad": ||g_i||; "grad_x_input": ||g_i * e_i|| (elementwise product); norm "l2" or "l1".
    """
    values = grad.float()
    if method == "grad_x_input":
        values = values * embeds.float()
    return values.norm(p=2 if norm == "l2" else 1, dim=-1)


def attention_mass(probs: torch.Tensor, query_mask: torch.Tensor, key_masks: torch.Tensor) -> torch.Tensor:
    """Share of attention from the query tokens onto each key set, averaged over queries.

    probs (B, H, T, T) rows sum to 1; query_mask (B, T) bool; key_masks (B, S, T) bool -> (B, S, H) float32.
    For each query, the attention mass on a key set is the sum of its probabilities over those keys; the result
    is the mean of that over the sample's query tokens (0 where a sample has no query).
    """
    per_query = torch.einsum("bhqk,bsk->bshq", probs.float(), key_masks.float())    # (B, S, H, T)
    q = query_mask.float()[:, None, None, :]
    return (per_query * q).sum(-1) / q.sum(-1).clamp(min=1)
