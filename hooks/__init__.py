"""leaf.hooks: gradient saliency, attention and module access on any Hugging Face causal LM, through nnsight.

    from leaf.hooks import load_model, encode_prompt_response, token_saliency, attention_mass
    model = load_model("path/or/hub-id")
    enc = encode_prompt_response(model.tokenizer, "What is 2+3?", "2+3 = 5")
    [scores] = token_saliency(model, [enc.input_ids], target_mask=[enc.response_mask])
    [mass] = attention_mass(model, [enc.input_ids], query_mask=[enc.response_mask],
                            key_masks={"prompt": [enc.prompt_mask]})
"""

from leaf.hooks.architecture import Architecture, discover
from leaf.hooks.batching import (EncodedSample, TokenBatch, encode_prompt_response, encode_text,
                                 render_head, render_prompt_response, tokens_in)
from leaf.hooks.loading import HookedModel, load_model, model_summary, wrap_model
from leaf.hooks.reductions import mean_nll
from leaf.hooks.tracing import (HookPlan, SampleResult, attention_mass, attention_probs, capture, run,
                                token_saliency)

__all__ = [
    "Architecture", "EncodedSample", "HookPlan", "HookedModel", "SampleResult", "TokenBatch", "attention_mass",
    "attention_probs", "capture", "discover", "encode_prompt_response", "encode_text", "load_model", "mean_nll", "model_summary",
    "render_head", "render_prompt_response", "run", "tokens_in", "token_saliency", "wrap_model",
]
