"""Hooks leave the model as they found it: same weights, same logits, no leftover hooks, even after an error."""

import pytest
import torch

from leaf.hooks import HookPlan, load_model, run


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_forward_hooks_with_kwargs", {})) for m in model.modules())


def _full_plan(encoded, model):
    return HookPlan(saliency="grad", target_mask=[e.response_mask for e in encoded],
                    query_mask=[e.response_mask for e in encoded], key_masks={"p": [e.prompt_mask for e in encoded]},
                    attention_probs=True, outputs=[model.arch.layer_path(0)], grads=[model.arch.layer_path(1)])


def test_weights_and_logits_unchanged_and_no_parameter_gradient(model_dirs, family, encoded):
    model = load_model(model_dirs[family])
    hf = model.hf_model
    ids = encoded[0].input_ids[None]
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    with torch.no_grad():
        before = hf(ids).logits
    hooks_before = _hook_count(hf)
    run(model, [e.input_ids for e in encoded], _full_plan(encoded, model))
    assert all(p.grad is None for p in hf.parameters())
    assert all(torch.equal(state[k], v) for k, v in hf.state_dict().items())
    assert all(p.requires_grad for p in hf.parameters())  # as loaded: restored after the call
    assert _hook_count(hf) == hooks_before
    with torch.no_grad():
        after = hf(ids).logits
    assert torch.equal(before, after)


def test_a_raising_loss_function_leaves_no_hooks_and_restores_state(model_dirs, samples):
    model = load_model(model_dirs["qwen2"])
    hf = model.hf_model
    hf.train()
    hooks_before = _hook_count(hf)

    def broken_loss(logits, input_ids, mask):
        raise RuntimeError("caller's bug")

    plan = _full_plan(samples, model)
    plan.loss_fn = broken_loss
    with pytest.raises(RuntimeError, match="caller's bug"):
        run(model, [e.input_ids for e in samples], plan)
    assert _hook_count(hf) == hooks_before
    assert hf.training and all(p.requires_grad for p in hf.parameters())
    assert hf.config._attn_implementation == "sdpa"
    hf.eval()
    # the model still works with the hooks afterwards, and gives what a fresh load gives
    plan.loss_fn = None
    again = run(model, [samples[0].input_ids], HookPlan(saliency="grad", target_mask=[samples[0].response_mask]))
    fresh = run(load_model(model_dirs["qwen2"]), [samples[0].input_ids],
                HookPlan(saliency="grad", target_mask=[samples[0].response_mask]))
    torch.testing.assert_close(again[0].saliency, fresh[0].saliency, atol=0, rtol=0)
