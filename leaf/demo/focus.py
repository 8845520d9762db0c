"""Attention focus per layer and head on the demo task, with the head chosen on validation data.

Averaged over every layer, head and response position, the share of attention on the distractors says little at
this scale: every model, distilled or not, puts about the same share there (the demo records that average as
`focus_overall` per setting in results.json). Two narrowings make it a measurement:
- queries: only the response positions that emit a number (the next token is a number), where copying a
  distractor's number is the error the student makes;
- heads: one (layer, head) chosen on a validation split, before any test data is looked at: the head of the
  student before distillation whose share of attention on the distractors differs most between the problems it
  gets wrong and those it gets right (the head whose reading of the distractor goes with the errors). The test
  figure is then that head's focus (1 - share on the distractors) in every student (same architecture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaf.demo.task import Problem


@dataclass(frozen=True)
class ChosenHead:
    layer: int
    head: int
    wrong_share: float   # mean share on the distractors over the validation problems the student got wrong
    right_share: float   # ... and over those it got right
    problems: int

    def as_json(self) -> dict:
        return {"layer": self.layer, "head": self.head, "wrong_share": self.wrong_share,
                "right_share": self.right_share, "validation_problems": self.problems}


def _is_number(token: str) -> bool:
    return token.strip().isdigit()


def distractor_shares(model, problems: list[Problem], *, batch_size: int = 32) -> torch.Tensor:
    """(N, L, H): per problem, layer and head, the share of the attention that the number-emitting response positions
    put on the question which lands on the distractor spans (attention sink excluded; NaN where a head puts no mass
    on the question). Problems without distractors are skipped by the caller."""
    from leaf.gold import token_gold
    from leaf.hooks import encode_prompt_response
    from leaf.hooks.confounder_attention import head_focus

    samples, queries, instructions, confounders = [], [], [], []
    tokens = model.tokenizer.convert_ids_to_tokens
    for p in problems:
        enc = encode_prompt_response(model.tokenizer, p.question, p.solution)
        ids = enc.input_ids.tolist()
        names = tokens(ids)
        response = enc.response_mask
        # position t emits token t + 1: a query when token t + 1 is a response number
        query = torch.zeros_like(response)
        for t in range(len(ids) - 1):
            query[t] = bool(response[t + 1]) and _is_number(names[t + 1])
        instruction = enc.prompt_mask & ~enc.special_mask
        instruction[0] = False
        conf = token_gold(enc.offsets, p.distractor_spans, base=enc.prompt_span[0]) & instruction
        samples.append(enc.input_ids)
        queries.append(query)
        instructions.append(instruction)
        confounders.append(conf)
    maps = head_focus(model, samples, queries, instructions, confounders, batch_size=batch_size)
    return torch.stack(maps)


def choose_head(shares: torch.Tensor, correct: list[bool]) -> ChosenHead:
    """The (layer, head) whose mean share on the distractors is highest on wrongly answered problems relative to
    rightly answered ones. shares (N, L, H); correct (N,)."""
    right = torch.tensor(correct, dtype=torch.bool)
    if right.all() or not right.any():  # nothing to contrast: the head that reads the distractors most
        mean = torch.nanmean(shares, 0)
        gap = mean
        wrong_mean = right_mean = mean
    else:
        wrong_mean = torch.nanmean(shares[~right], 0)
        right_mean = torch.nanmean(shares[right], 0)
        gap = wrong_mean - right_mean
    flat = int(torch.nan_to_num(gap, nan=-1.0).argmax())
    layer, head = divmod(flat, shares.shape[2])
    return ChosenHead(layer, head, float(wrong_mean[layer, head]), float(right_mean[layer, head]), len(correct))


def focus_summary(shares: torch.Tensor, chosen: ChosenHead | None) -> dict:
    """Focus (1 - share on the distractors): at the chosen head, per layer (heads pooled by mean), and overall."""
    mean = torch.nanmean(shares, 0)                     # (L, H)
    out = {"overall": 1 - float(torch.nanmean(mean)),
           "per_layer": [round(1 - float(v), 5) for v in torch.nanmean(mean, 1)],
           "per_head": [[round(1 - float(v), 5) for v in row] for row in mean]}
    if chosen is not None and chosen.layer < mean.shape[0] and chosen.head < mean.shape[1]:
        out["chosen_head"] = 1 - float(mean[chosen.layer, chosen.head])
    return out
