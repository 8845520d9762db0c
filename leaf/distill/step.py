"""The loss of one `leaf distill` batch, as a function of plain inputs (no Trainer): the student, the teacher (online
or its top-k cache), the batch `leaf.distill.data.make_collator` makes, and λ.

    loss, terms = distill_step(student, teacher, batch, lam=0.7, divergence=forward_kl)
    loss.backward()

Per sample, over response positions only: λ·D(p_T(·|X) || p_S(·|X)) + (1-λ)·D(p_T(·|X\\A) || p_S(·|X\\A))
(`leaf.distill.losses.hybrid_loss`); a sample with an instruction- and a response-level counterfactual takes the
mean of the two as its second term, one without any the first term alone. The models run their LM head only at the
positions the loss reads (logits_to_keep). The math lives in `leaf.distill.losses` and `leaf.distill.cross_tokenizer`.

A model here is called as model(input_ids=, attention_mask=, logits_to_keep=) and returns an object with .logits
(any transformers causal LM). Shapes: B batch rows, R counterfactual rows, T positions, U kept positions, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaf.distill.losses import (Divergence, hybrid_loss, kd_loss, kd_loss_from_cache, logit_mask,
                                 per_sample_mean)
from leaf.distill.teacher_cache import TeacherCache
from leaf.errors import LeafError
from leaf.hooks.reductions import mean_nll_at


@dataclass
class StepTerms:
    """What one batch logs: λ, the batch means of the per-sample terms (kd_counterfactual over the samples that
    have a counterfactual; None when none ran) and the tokens the forward passes read."""

    lam: float
    kd_original: float
    kd_counterfactual: float | None
    tokens: int


def distill_step(student, teacher, batch: dict, *, lam: float, divergence: Divergence, temperature: float = 1.0,
                 chunk_size: int = 1024, ce_weight: float = 0.0,
                 matched: tuple[torch.Tensor, torch.Tensor] | None = None,
                 uld_weight: float = 1.0, score_counterfactuals: bool = False) -> tuple[torch.Tensor, StepTerms]:
    """The training loss of one batch (a scalar with the student's graph) and its logged terms.

    teacher: the online teacher model (run under no_grad, on the device it is on; its logits are moved to the
    student's) or a TeacherCache. matched: the (teacher ids, student ids) pair of --cross-tokenizer
    (`leaf.distill.cross_tokenizer.vocabulary_map`), which needs the online teacher and the collator's cross
    views in the batch. ce_weight adds that weight x the student's mean NLL of the reference response.
    Counterfactual rows run only when the batch has some and λ < 1, or with score_counterfactuals (evaluation
    reports both terms whatever λ is; the loss is unchanged)."""
    use_cf = "cf_index" in batch and (lam < 1 or score_counterfactuals)
    if matched is not None:
        if isinstance(teacher, TeacherCache):
            raise LeafError("--cross-tokenizer needs the teacher's full distributions online, not the top-k cache.")
        original, counterfactual = _cross_tokenizer_terms(student, teacher, batch, use_cf, matched,
                                                          divergence=divergence, temperature=temperature,
                                                          uld_weight=uld_weight)
        s_original = None
    else:
        kd = dict(divergence=divergence, temperature=temperature, chunk_size=chunk_size)
        original, counterfactual, s_original = _same_vocabulary_terms(student, teacher, batch, use_cf, kd)
    has_cf = torch.zeros_like(original, dtype=torch.bool)
    if counterfactual is None:
        counterfactual = torch.zeros_like(original)
    else:
        has_cf[batch["cf_index"]] = True
    loss = hybrid_loss(original, counterfactual, has_cf, lam)
    if ce_weight:
        if s_original is None:  # the cross-tokenizer path ran the student on the aligned positions only
            s_original = _student_logits(student, batch["input_ids"], batch["attention_mask"],
                                         batch["response_mask"])
        s_logits, _, s_keep = s_original
        loss = loss + ce_weight * mean_nll_at(s_logits, batch["input_ids"], batch["response_mask"], s_keep).mean()
    terms = StepTerms(lam=lam, kd_original=float(original.detach().mean()),
                      kd_counterfactual=float(counterfactual.detach()[has_cf].mean()) if has_cf.any() else None,
                      tokens=int(batch["attention_mask"].sum()) + (  # the forward passes that ran
                          int(batch["cf_attention_mask"].sum()) if use_cf else 0))
    return loss, terms


def _student_logits(student, ids: torch.Tensor, attention: torch.Tensor, response: torch.Tensor):
    """The student's logits at the positions the loss reads (the LM head never runs on the prompt), the logit mask
    over those positions, and the positions: ((B, U, V), (B, U), (U,))."""
    selected = logit_mask(response)
    keep = selected.any(0).nonzero().flatten()
    logits = student(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits
    return logits, selected[:, keep], keep


def _kd_term(teacher, s_logits: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, ids: torch.Tensor,
             attention: torch.Tensor, keys: list[tuple[int, int]], kd: dict) -> torch.Tensor:
    """Per-row D(p_T || p_S) (B,) for one set of rows, the teacher online or from the cache (rows `keys`)."""
    if isinstance(teacher, TeacherCache):
        logp, top = teacher.batch(keys)
        return kd_loss_from_cache(s_logits, mask, logp.to(s_logits.device), top.to(s_logits.device), **kd)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attention,
                           logits_to_keep=keep.to(ids.device)).logits.to(s_logits.device)
    return kd_loss(s_logits, t_logits, mask, **kd)


def _same_vocabulary_terms(student, teacher, batch: dict, use_cf: bool, kd: dict):
    """Per-sample original term (B,), counterfactual term (B,) or None, and the student's original logits (see
    _student_logits), for a teacher with the student's token ids."""
    index = batch["index"].tolist()
    s_original = _student_logits(student, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    original = _kd_term(teacher, *s_original, batch["input_ids"], batch["attention_mask"],
                        [(i, 0) for i in index], kd)                                                    # (B,)
    if not use_cf:
        return original, None, s_original
    keys = [(index[r], 1 + j) for r, j in zip(batch["cf_index"].tolist(), batch["cf_choice"].tolist())]
    per_row = _kd_term(teacher, *_student_logits(student, batch["cf_input_ids"], batch["cf_attention_mask"],
                                                 batch["cf_response_mask"]),
                       batch["cf_input_ids"], batch["cf_attention_mask"], keys, kd)                    # (R,)
    # a sample with an instruction- and a response-level counterfactual: the mean of the two
    return original, per_sample_mean(per_row, batch["cf_index"], len(index)), s_original


def _cross_tokenizer_terms(student, teacher, batch: dict, use_cf: bool, matched: tuple[torch.Tensor, torch.Tensor],
                           **cross) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample original term (B,) and counterfactual term (B,) or None with --cross-tokenizer: the teacher reads
    its own tokens (the collator's t_input_ids), aligned to the student's through the batch's cross views."""
    from leaf.distill.cross_tokenizer import batch_term

    device = batch["input_ids"].device

    def s_forward(ids, attention, keep):
        return student(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits

    def t_forward(ids, attention, keep):
        with torch.no_grad():
            return teacher(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits.to(device)

    cross.update(t_matched=matched[0].to(device), s_matched=matched[1].to(device))
    rows = len(batch["index"])
    original = batch_term(s_forward, t_forward, batch, "", batch["input_ids"], batch["attention_mask"], rows,
                          **cross)                                                                     # (B,)
    if not use_cf:
        return original, None
    per_row = batch_term(s_forward, t_forward, batch, "cf_", batch["cf_input_ids"], batch["cf_attention_mask"],
                         len(batch["cf_index"]), **cross)                                              # (R,)
    return original, per_sample_mean(per_row, batch["cf_index"], rows)
