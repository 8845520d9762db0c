"""A sample X and its counterfactual X\\A (spans of its prompt removed), rendered, encoded and aligned: the input of
every patching map, per-head focus and attribution that compares the two.

    from leaf.hooks import counterfactual_pair, patching_sweep
    pair = counterfactual_pair(model.tokenizer, question, solution, spans=[(18, 40)])
    result = patching_sweep(model, pair.original.input_ids, pair.counterfactual.input_ids, pair.alignment,
                            pair.target)

Both texts are rendered the same way (`render`, the tokenizer's chat template by default, or the rendering a
`leaf analyze` folder recorded), so they differ only by the removed spans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from leaf.errors import LeafError
from leaf.hooks.alignment import Alignment, align_tokens
from leaf.hooks.templates import EncodedSample, encode_text, render_prompt_response

# (prompt, response) -> (text, prompt character span, response character span)
Render = Callable[[str, str], tuple[str, tuple[int, int], tuple[int, int]]]


@dataclass(frozen=True)
class CounterfactualPair:
    """X and X\\A encoded; `pruned`: the removed spans in X's text; `alignment`: X's positions to X\\A's;
    `target` / `cf_target`: each one's response tokens but position 0 (the metric's tokens); `confounder`: X's prompt
    tokens that overlap a removed span."""

    original: EncodedSample
    counterfactual: EncodedSample
    text: str
    cf_text: str
    pruned: list[tuple[int, int]]
    alignment: Alignment
    target: torch.Tensor
    cf_target: torch.Tensor
    confounder: torch.Tensor


def counterfactual_pair(tokenizer, prompt: str, response: str, spans: list[tuple[int, int]], *,
                        render: Render | None = None) -> CounterfactualPair:
    """X = (prompt, response) and X\\A = (prompt with `spans` removed, response), rendered by `render` (default: the
    tokenizer's chat template), encoded with `tokenizer`, and aligned token by token through their characters.
    `spans`: character spans of `prompt`."""
    from leaf.gold import token_gold
    from leaf.spans import remove_spans

    if not spans:
        raise LeafError("counterfactual_pair needs at least one span of the prompt to remove.")
    if any(not 0 <= a < b <= len(prompt) for a, b in spans):
        raise LeafError(f"Spans {spans} do not all lie inside the prompt ({len(prompt)} characters).")
    render = render or (lambda p, r: render_prompt_response(tokenizer, p, r))
    text, pspan, rspan = render(prompt, response)
    cf_text, cf_pspan, cf_rspan = render(remove_spans(prompt, spans), response)
    x, xs = encode_text(tokenizer, text, pspan, rspan), encode_text(tokenizer, cf_text, cf_pspan, cf_rspan)
    pruned = [(pspan[0] + a, pspan[0] + b) for a, b in spans]
    target, cf_target = x.response_mask.clone(), xs.response_mask.clone()
    target[0] = cf_target[0] = False
    confounder = token_gold(x.offsets, spans, base=pspan[0]) & x.prompt_mask
    return CounterfactualPair(x, xs, text, cf_text, pruned, align_tokens(text, x.offsets, cf_text, xs.offsets, pruned),
                              target, cf_target, confounder)
