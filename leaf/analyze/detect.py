"""Confounder detection for one analysis unit: scores in, Δ, flags, spans and counterfactual texts out.

A unit is one (sample, loss, region) triple: at instruction level the loss is the response NLL and the region the
instruction tokens; at response level the loss is segment k's NLL and the region the earlier segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaf.gold import DetectionCounts, token_gold
from leaf.records import AnalysedUnit, Counterfactual, Span, TokenScore
from leaf.hooks.templates import tokens_in
from leaf.analyze.scoring import delta, group_mean, minmax
from leaf.analyze.thresholds import THRESHOLDS, Flags, ThresholdContext, flag
from leaf.spans import grow_spans, never_flagged, piece_index, pieces, project, remove_spans, token_spans


@dataclass
class Unit:
    level: str                     # "instruction" | "response"
    segment: int | None            # response level: the segment whose NLL is the loss (2 or 3)
    target: tuple[int, int]        # char span whose tokens form the loss
    region: tuple[int, int]        # char span whose tokens are scored
    base: tuple[int, int]          # char span of the field the spans are reported in (prompt or response)


def candidates(text: str, offsets: torch.Tensor, special: torch.Tensor, region: tuple[int, int]) -> torch.Tensor:
    """Tokens of the region that may be flagged: not special, not whitespace-, newline- or backslash-only."""
    mask = tokens_in(offsets, special, region)
    for i in mask.nonzero().flatten().tolist():
        if never_flagged(text[int(offsets[i, 0]): int(offsets[i, 1])]):
            mask[i] = False
    return mask


def contexts(config, d: torch.Tensor, surprisal: torch.Tensor | None, seed: int) -> dict[str, ThresholdContext]:
    """One ThresholdContext per mode, with the fields its registry entry needs: --tau, --quantile, the student's
    surprisal, a generator seeded with `seed`, and for the baselines the count config.baseline_count's gradient
    mode flags on Δ (d)."""
    values = {"tau": config.tau, "quantile": config.quantile, "surprisal": surprisal}

    def context(name: str) -> ThresholdContext:
        needs = THRESHOLDS[name].needs
        fresh = {"generator": torch.Generator().manual_seed(seed)} if "generator" in needs else {}
        return ThresholdContext(**{need: values[need] for need in needs if need in values}, **fresh)

    values["count"] = int(flag(config.baseline_count, d, context(config.baseline_count)).mask.sum())
    return {name: context(name) for name in THRESHOLDS}


def detect(config, unit: Unit, text: str, s_enc, t_enc, s_scores: torch.Tensor, t_scores: torch.Tensor,
           s_surprisal: torch.Tensor | None, seed: int, gold_spans: list[tuple[int, int]] | None,
           counts: list[dict[str, DetectionCounts]] | None) -> tuple[AnalysedUnit, dict[str, torch.Tensor]]:
    """Δ, flags, spans and counterfactuals of one unit -> (its record, raw tensors).

    With gold spans, every mode that can run adds its flags to each of the `counts` tables (e.g. all samples, and
    the subset whose gold is exact)."""
    cand = candidates(text, s_enc.offsets, s_enc.special_mask, unit.region)
    t_region = tokens_in(t_enc.offsets, t_enc.special_mask, unit.region)
    t_on_s = project(t_scores, t_enc.offsets, t_region, s_enc.offsets, cand, len(text))
    idx = cand.nonzero().flatten()
    g_s, g_t = minmax(s_scores[idx]), minmax(t_on_s[idx])
    d = delta(t_on_s[idx], s_scores[idx])
    surprisal = s_surprisal[idx] if s_surprisal is not None else None
    # --aggregate clause|sentence: every mode decides over pieces (mean Δ / mean surprisal of their tokens)
    owner = piece_index(text, s_enc.offsets, idx, pieces(text, unit.region, config.aggregate)) \
        if config.aggregate != "token" and idx.numel() else None
    if owner is not None:
        owner = torch.unique(owner, return_inverse=True)[1]  # pieces that hold candidates, numbered 0..G-1
        d_units = group_mean(d, owner)
        s_units = group_mean(surprisal, owner) if surprisal is not None else None
    else:
        d_units, s_units = d, surprisal
    ctxs = contexts(config, d_units, s_units, seed)
    modes = list(THRESHOLDS) if counts is not None else [config.threshold]
    if counts is not None:  # every mode that can run, for the detection table
        modes = [m for m in modes if m == config.threshold or THRESHOLDS[m].can_run(ctxs[m])]
    chosen = None
    for mode in modes:
        flags = flag(mode, d_units, ctxs[mode])
        if owner is not None:  # back from pieces to their tokens
            flags = Flags(flags.mask[owner], flags.threshold)
        full = torch.zeros(len(s_enc.offsets), dtype=torch.bool)
        full[idx] = flags.mask
        runs = token_spans(full, s_enc.offsets, text, cand, across_lines=config.domain != "code")
        spans = grow_spans(runs, text, s_enc.offsets, cand, unit.region, config.span_unit)
        if counts is not None and gold_spans is not None:
            gold = token_gold(s_enc.offsets, gold_spans, base=unit.base[0])
            predicted = [(a - unit.base[0], b - unit.base[0]) for a, b, _ in spans]
            pruned = token_gold(s_enc.offsets, predicted, base=unit.base[0])[idx]
            prompt = text[unit.base[0]: unit.base[1]]
            for table in counts:
                table.setdefault(mode, DetectionCounts()).add(flags.mask, gold[idx], predicted, gold_spans,
                                                              pruned=pruned, prompt=prompt)
        if mode == config.threshold:
            chosen = (flags, spans)
    flags, spans = chosen
    base_text = text[unit.base[0]: unit.base[1]]
    rel = [(a - unit.base[0], b - unit.base[0], tokens) for a, b, tokens in spans]
    if config.pruning == "span":
        groups = [[(a, b)] for a, b, _ in rel]
    else:
        groups = [[(a, b) for a, b, _ in rel]] if rel else []
    field_name = "prompt" if unit.level == "instruction" else "response"
    counterfactuals = [Counterfactual(removed=group, **{field_name: remove_spans(base_text, group)})
                       for group in groups]
    record = AnalysedUnit(
        level=unit.level, segment=unit.segment, target_span=unit.target, region_span=unit.region,
        threshold_mode=config.threshold, threshold=flags.threshold,
        tokens=[TokenScore(index=int(i), start=int(s_enc.offsets[i, 0]), end=int(s_enc.offsets[i, 1]),
                           teacher=round(float(a), 5), student=round(float(b), 5), delta=round(float(c), 5),
                           flag=bool(f)) for i, a, b, c, f in zip(idx, g_t, g_s, d, flags.mask)],
        spans=[Span(start=a, end=b, text=base_text[a:b], tokens=tokens) for a, b, tokens in rel],
        counterfactuals=counterfactuals)
    tensors = {"student": s_scores.float(), "teacher": t_scores.float(), "teacher_on_student": t_on_s.float(),
               "candidates": idx.to(torch.int64), "delta": d.float()}
    return record, tensors

