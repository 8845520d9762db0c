"""Logit distillation between models with different tokenizers (`leaf distill --cross-tokenizer`), as pure functions.

The approach of Universal Logit Distillation (Boizard et al., 2024) as extended by TRL's GOLD trainer, with two
choices of leaf's own:

1. Alignment through character offsets. Each model tokenizes the same response text (its own chat template around
   it); response tokens are grouped so that a group covers the same characters in both tokenizations: walk both
   token lists and close a group wherever both end at the same character (`align_groups`). The end-of-turn tokens
   (which teach the student to stop) form one last group.
2. Per group, each model's distribution at the group's first token, scaled by the probability it gives to the rest
   of its own tokens of the group (the "observed" merge: log q(v) = log p(v | prefix) + Σ log p(later tokens)).
   The mass 1 - Σ q is the probability of any other continuation.
3. The loss of a group: the divergence between the two distributions over the vocabulary entries both tokenizers
   spell the same (`vocabulary_map`, end-of-turn tokens paired), plus one bucket for everything else (the rest of
   the mass: unmatched tokens and other continuations) -- exact for identical tokenizers, where it is plain KD --
   and, weighted by `uld_weight`, ULD's sorted-probability L1 distance between the unmatched tokens' probabilities,
   which compares the shapes of the two distributions where no token corresponds.

Shapes: G groups, V_t / V_s vocabularies, M matched entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from leaf.distill.losses import Divergence, _with_tail, forward_kl


def align_groups(s_offsets: Sequence[tuple[int, int]], t_offsets: Sequence[tuple[int, int]]
                 ) -> list[tuple[list[int], list[int]]]:
    """Group two tokenizations of the same text: [(student token indices, teacher token indices), ...] in order.

    Offsets are (start, end) character spans in the shared text (e.g. relative to the response start), in order,
    without empty tokens. A group closes where both sides' current tokens end at the same character; what is left at
    the end (text one side covers and the other does not) forms a last group when both sides have tokens in it."""
    groups, s_start, t_start, s, t = [], 0, 0, 0, 0
    while s < len(s_offsets) and t < len(t_offsets):
        s_end, t_end = s_offsets[s][1], t_offsets[t][1]
        if s_end < t_end:
            s += 1
        elif t_end < s_end:
            t += 1
        else:
            s, t = s + 1, t + 1
            groups.append((list(range(s_start, s)), list(range(t_start, t))))
            s_start, t_start = s, t
    if s_start < len(s_offsets) and t_start < len(t_offsets):
        groups.append((list(range(s_start, len(s_offsets))), list(range(t_start, len(t_offsets)))))
    return groups


def vocabulary_map(teacher_tokenizer, student_tokenizer, *, pairs: Sequence[tuple[int, int]] = ()
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher ids, student ids) of the vocabulary entries spelled the same in both tokenizers, plus the given
    (teacher id, student id) pairs (e.g. their end-of-turn tokens); each id appears at most once."""
    student = student_tokenizer.get_vocab()
    t_ids, s_ids, seen_t, seen_s = [], [], set(), set()
    for t_id, s_id in [*pairs, *((t, student[tok]) for tok, t in sorted(teacher_tokenizer.get_vocab().items(),
                                                                          key=lambda kv: kv[1]) if tok in student)]:
        if t_id not in seen_t and s_id not in seen_s:
            t_ids.append(t_id)
            s_ids.append(s_id)
            seen_t.add(t_id)
            seen_s.add(s_id)
    return torch.tensor(t_ids, dtype=torch.long), torch.tensor(s_ids, dtype=torch.long)


def group_log_probs(logp: torch.Tensor, first: torch.Tensor, later_rows: torch.Tensor, later_tokens: torch.Tensor,
                    later_group: torch.Tensor) -> torch.Tensor:
    """Each group's merged (log, unnormalised) distribution: (G, V).

    logp (N, V) float32 log-probabilities at the predictor positions; first (G,) the row of logp that predicts each
    group's first token; later_rows / later_tokens / later_group (L,): for every later token of a group, the row
    that predicts it, its id and its group."""
    scale = torch.zeros(first.shape[0], dtype=logp.dtype, device=logp.device)
    if later_rows.numel():
        scale = scale.index_add(0, later_group, logp[later_rows, later_tokens])
    return logp[first] + scale[:, None]


def cross_tokenizer_loss(t_logq: torch.Tensor, s_logq: torch.Tensor, t_matched: torch.Tensor,
                         s_matched: torch.Tensor, *, divergence: Divergence = forward_kl,
                         uld_weight: float = 1.0) -> torch.Tensor:
    """Per-group loss (G,): divergence over the matched entries plus one bucket for the rest of the mass, plus
    uld_weight x the L1 distance between the sorted probabilities of the unmatched entries (ULD).

    t_logq (G, V_t), s_logq (G, V_s): merged log distributions (group_log_probs); t_matched, s_matched (M,)."""
    matched = divergence(_with_tail(t_logq[:, t_matched]), _with_tail(s_logq[:, s_matched]))
    if uld_weight == 0:
        return matched
    t_rest = torch.ones(t_logq.shape[-1], dtype=torch.bool, device=t_logq.device)
    s_rest = torch.ones(s_logq.shape[-1], dtype=torch.bool, device=s_logq.device)
    t_rest[t_matched], s_rest[s_matched] = False, False
    if not t_rest.any() and not s_rest.any():
        return matched
    t_sorted = t_logq[:, t_rest].exp().sort(-1, descending=True).values
    s_sorted = s_logq[:, s_rest].exp().sort(-1, descending=True).values
    width = max(t_sorted.shape[-1], s_sorted.shape[-1])
    t_sorted = torch.nn.functional.pad(t_sorted, (0, width - t_sorted.shape[-1]))
    s_sorted = torch.nn.functional.pad(s_sorted, (0, width - s_sorted.shape[-1]))
    return matched + uld_weight * (t_sorted - s_sorted).abs().sum(-1)


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends an assistant turn in the tokenizer's template (the first known end-of-turn marker, else
    EOS): the pair of these is matched across tokenizers, so the student learns where to stop."""
    from leaf.end_of_turn import END_OF_TURN

    vocab = tokenizer.get_vocab()
    return next((vocab[t] for t in END_OF_TURN if t in vocab), tokenizer.eos_token_id)


def cross_view(s_enc, t_enc, s_stops: set[int], t_stops: set[int]) -> dict:
    """How one rendered sample's response lines up in the two tokenizations (each model's own encoding, see
    leaf.hooks.encode_text): the teacher's token ids and, per group, the predictor position of its first token and
    (predictor position, token id) of its later tokens, on each side. The end-of-turn tokens form a last group."""
    sides = []
    for enc, stops in ((s_enc, s_stops), (t_enc, t_stops)):
        positions = enc.response_mask.nonzero().flatten().tolist()
        start = enc.response_span[0]
        offsets = [(int(enc.offsets[i, 0]) - start, int(enc.offsets[i, 1]) - start) for i in positions]
        ids = enc.input_ids.tolist()
        last = positions[-1] if positions else None
        end = next((j for j in range(last + 1, len(ids)) if ids[j] in stops), None) if last is not None else None
        sides.append((positions, offsets, ids, list(range(last + 1, end + 1)) if end is not None else []))
    (s_pos, s_off, s_ids, s_tail), (t_pos, t_off, t_ids, t_tail) = sides
    groups = [([s_pos[i] for i in a], [t_pos[j] for j in b]) for a, b in align_groups(s_off, t_off)]
    if s_tail and t_tail:
        groups.append((s_tail, t_tail))
    view = {"t_ids": t_ids, "s_first": [], "s_later": [], "t_first": [], "t_later": []}
    for g, (s_group, t_group) in enumerate(groups):
        for side, group, ids in (("s", s_group, s_ids), ("t", t_group, t_ids)):
            view[f"{side}_first"].append(group[0] - 1)                       # logit t predicts token t + 1
            view[f"{side}_later"] += [(p - 1, ids[p], g) for p in group[1:]]
    return view


def log_probs_at(forward, ids: torch.Tensor, attention: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """(N, V) float32 log-probabilities of a model at the given (row, position) pairs, the LM head run only at the
    positions needed. forward(input_ids, attention_mask, logits_to_keep) -> logits."""
    keep, index = torch.unique(positions, return_inverse=True)
    logits = forward(ids, attention, keep)                                 # (B, U, V)
    return (logits[rows, index].float() / temperature).log_softmax(-1)


def batch_term(student_forward, teacher_forward, batch: dict, prefix: str, s_ids: torch.Tensor,
               s_attention: torch.Tensor, rows: int, t_matched: torch.Tensor, s_matched: torch.Tensor, *,
               divergence: Divergence = forward_kl, temperature: float = 1.0, uld_weight: float = 1.0
               ) -> torch.Tensor:
    """Per-row cross-tokenizer loss (rows,) for one set of rows of a batch (originals, prefix "", or
    counterfactuals, prefix "cf_"), from the alignment leaf.distill.data's collator flattened into `batch`."""
    from leaf.distill.losses import per_sample_mean

    x = {k[len(prefix) + 2:]: v for k, v in batch.items() if k.startswith(f"{prefix}x_")}
    logq = {}
    for side, forward, ids, attention in (("s", student_forward, s_ids, s_attention),
                                          ("t", teacher_forward, batch[f"{prefix}t_input_ids"],
                                           batch[f"{prefix}t_attention_mask"])):
        b = torch.cat([x[f"{side}_first_b"], x[f"{side}_later_b"]])
        p = torch.cat([x[f"{side}_first_p"], x[f"{side}_later_p"]])
        logp = log_probs_at(forward, ids, attention, b, p, temperature)
        groups = x[f"{side}_first_b"].shape[0]
        later = torch.arange(groups, groups + x[f"{side}_later_b"].shape[0], device=logp.device)
        logq[side] = group_log_probs(logp, torch.arange(groups, device=logp.device), later,
                                     x[f"{side}_later_tok"], x[f"{side}_later_g"])
    per_group = cross_tokenizer_loss(logq["t"].detach(), logq["s"], t_matched, s_matched, divergence=divergence,
                                     uld_weight=uld_weight) * temperature ** 2
    return per_sample_mean(per_group, x["group_row"], rows)
