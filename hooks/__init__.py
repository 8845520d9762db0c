"""leaf.hooks: gradient saliency, attention and module access on any Hugging Face causal LM, through nnsight.

    from leaf.hooks import load_model, encode_prompt_response, token_saliency, attention_mass
    model = load_model("path/or/hub-id")
    enc = encode_prompt_response(model.tokenizer, "What is 2+3?", "2+3 = 5")
    [scores] = token_saliency(model, [enc.input_ids], target_mask=[enc.response_mask])
    [mass] = attention_mass(model, [enc.input_ids], query_mask=[enc.response_mask],
                            key_masks={"prompt": [enc.prompt_mask]})

Research tools on the same hooks: counterfactual_pair (a sample and its counterfactual, rendered, encoded and
aligned), patching_sweep (activation patching between an input and its counterfactual,
batched), head_focus (per-head share of attention on confounder spans), attribute / attribute_all with
list_methods() (saliency, input_x_gradient, integrated_gradients, attention_rollout), heatmap_png (pictures).

The names below load on first use (torch, transformers and nnsight with them), so that a light module of this
package (leaf.hooks.components, the patching registry the command line reads) imports in milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Alignment", "align_tokens"), "alignment"),
    **dict.fromkeys(("Architecture", "discover"), "architecture"),
    **dict.fromkeys(("attribute", "attribute_all", "describe_methods", "list_methods", "register"), "attribution"),
    **dict.fromkeys(("TokenBatch",), "batching"),
    **dict.fromkeys(("COMPONENTS", "Component"), "components"),
    **dict.fromkeys(("CounterfactualPair", "counterfactual_pair"), "counterfactual"),
    **dict.fromkeys(("EncodedSample", "encode_prompt_response", "encode_text", "render_head",
                     "render_prompt_response", "tokens_in"), "templates"),
    **dict.fromkeys(("HookedModel", "load_model", "model_summary", "wrap_model"), "loading"),
    **dict.fromkeys(("mean_nll",), "reductions"),
    **dict.fromkeys(("head_focus", "mean_focus"), "confounder_attention"),
    **dict.fromkeys(("PatchedRun", "PatchingResult", "patch_all", "patching_sweep"), "patching"),
    **dict.fromkeys(("heatmap_png",), "pictures"),
    **dict.fromkeys(("HookPlan", "SampleResult", "attention_mass", "attention_probs", "capture", "run",
                     "token_saliency"), "tracing"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leaf.hooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"leaf.hooks.{_EXPORTS[name]}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # the same names, for type checkers and the API reference
    from leaf.hooks.alignment import Alignment, align_tokens
    from leaf.hooks.architecture import Architecture, discover
    from leaf.hooks.attribution import attribute, attribute_all, describe_methods, list_methods, register
    from leaf.hooks.batching import TokenBatch
    from leaf.hooks.components import COMPONENTS, Component
    from leaf.hooks.confounder_attention import head_focus, mean_focus
    from leaf.hooks.counterfactual import CounterfactualPair, counterfactual_pair
    from leaf.hooks.loading import HookedModel, load_model, model_summary, wrap_model
    from leaf.hooks.patching import PatchedRun, PatchingResult, patch_all, patching_sweep
    from leaf.hooks.pictures import heatmap_png
    from leaf.hooks.reductions import mean_nll
    from leaf.hooks.templates import (EncodedSample, encode_prompt_response, encode_text, render_head,
                                      render_prompt_response, tokens_in)
    from leaf.hooks.tracing import (HookPlan, SampleResult, attention_mass, attention_probs, capture, run,
                                    token_saliency)
