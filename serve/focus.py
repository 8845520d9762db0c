"""Attention focus: how much of the attention the response pays to the instruction lands off the confounders.

For one sample with confounder character spans in its prompt, rendered with the model's chat template and its
reference response: per layer, the attention mass from response positions (mean over them) onto the instruction's
non-confounding tokens, over the mass onto all instruction tokens, pooled over heads. The attention-sink token (the
first) is excluded, and template tokens are not instruction tokens. `wasted` = 1 - focus. `token_share` is what
uniform attention would give (the non-confounding share of the instruction's tokens), for reference.

vLLM exposes no attention probabilities, so this runs on the HF model through `leaf.hooks` (eager attention, each
layer's map reduced and dropped as it is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaf.gold import token_gold


@dataclass
class FocusSample:
    prompt: str
    response: str
    confounders: list[tuple[int, int]]  # character spans in `prompt`


def focus_from_mass(clean: torch.Tensor, confounder: torch.Tensor) -> torch.Tensor:
    """Per-layer focus from (L, H) masses onto the clean and the confounding instruction tokens: pooled over heads."""
    c, d = clean.float().sum(-1), confounder.float().sum(-1)
    return c / (c + d).clamp(min=1e-12)


def attention_focus(model, samples: list[FocusSample], *, batch_size: int = 4, chat_template: bool = True,
                    progress: bool = False) -> dict | None:
    """Focus per layer and averaged over the samples that have at least one confounding instruction token; None if
    no sample has one."""
    from leaf.hooks import attention_mass, encode_prompt_response

    ids, queries, clean_masks, conf_masks, shares = [], [], [], [], []
    for sample in samples:
        enc = encode_prompt_response(model.tokenizer, sample.prompt, sample.response, chat_template=chat_template)
        if model.max_length and len(enc.input_ids) > model.max_length:
            continue
        instruction = enc.prompt_mask & ~enc.special_mask
        instruction[0] = False  # the sink
        conf = token_gold(enc.offsets, sample.confounders, base=enc.prompt_span[0]) & instruction
        if not conf.any() or not (instruction & ~conf).any() or not enc.response_mask.any():
            continue
        ids.append(enc.input_ids)
        queries.append(enc.response_mask)
        clean_masks.append(instruction & ~conf)
        conf_masks.append(conf)
        shares.append(float((instruction & ~conf).sum()) / float(instruction.sum()))
    if not ids:
        return None
    masses = attention_mass(model, ids, queries, {"clean": clean_masks, "confounder": conf_masks},
                            exclude_sink=True, batch_size=batch_size, progress=progress)
    per_sample = torch.stack([focus_from_mass(m["clean"], m["confounder"]) for m in masses])  # (N, L)
    per_layer = per_sample.mean(0)
    focus = float(per_layer.mean())
    return {"focus": focus, "wasted": 1 - focus, "per_layer": [round(float(v), 6) for v in per_layer],
            "token_share": sum(shares) / len(shares), "samples": len(ids)}
