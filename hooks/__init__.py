"""leaf.hooks: gradient saliency, attention and module access on any Hugging Face causal LM, through nnsight.

    from leaf.hooks import load_model, encode_prompt_response, token_saliency, attention_mass
    model = load_model("path/or/hub-id")
    enc = encode_prompt_response(model.tokenizer, "What is 2+3?", "2+3 = 5")
    [scores] = token_saliency(model, [enc.input_ids], target_mask=[enc.response_mask])
    [mass] = attention_mass(model, [enc.input_ids], query_mask=[enc.response_mask],
                            key_masks={"prompt": [enc.prompt_mask]})

Research tools on the same hooks: patching_sweep (activation patching between an input and its counterfactual,
batched), head_focus (per-head share of attention on confounder spans), attribute / attribute_all with
list_methods() (saliency, input_x_gradient, integrated_gradients, attention_rollout), heatmap_png (pictures).
"""

from leaf.hooks.alignment import Alignment, align_tokens
from leaf.hooks.architecture import Architecture, discover
from leaf.hooks.attribution import attribute, attribute_all, describe_methods, list_methods, register
from leaf.hooks.batching import TokenBatch
from leaf.hooks.templates import (EncodedSample, encode_prompt_response, encode_text, render_head,
                                  render_prompt_response, tokens_in)
from leaf.hooks.loading import HookedModel, load_model, model_summary, wrap_model
from leaf.hooks.reductions import mean_nll
from leaf.hooks.confounder_attention import head_focus, mean_focus
from leaf.hooks.patching import COMPONENTS, PatchedRun, PatchingResult, patch_all, patching_sweep
from leaf.hooks.pictures import heatmap_png
from leaf.hooks.tracing import (HookPlan, SampleResult, attention_mass, attention_probs, capture, run,
                                token_saliency)

__all__ = [
    "Alignment", "Architecture", "COMPONENTS", "EncodedSample", "HookPlan", "HookedModel", "PatchingResult",
    "SampleResult", "TokenBatch", "align_tokens", "attention_mass", "attention_probs", "attribute", "attribute_all",
    "capture", "describe_methods", "discover", "encode_prompt_response", "encode_text", "head_focus", "heatmap_png",
    "list_methods", "load_model", "mean_focus", "mean_nll", "model_summary", "PatchedRun", "patch_all",
    "patching_sweep", "register",
    "render_head", "render_prompt_response", "run", "tokens_in", "token_saliency", "wrap_model",
]
