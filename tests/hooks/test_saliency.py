"""token_saliency against plain autograd on inputs_embeds, on every test architecture, with padding in the batch."""

import pytest
import torch

from leaf.hooks import load_model, mean_nll, run, HookPlan, token_saliency
from tests.hooks import reference
from tests.tolerances import MODEL_ATOL, MODEL_RTOL

ATOL, RTOL = MODEL_ATOL, MODEL_RTOL   # tests/tolerances.py: a tiny model's float32 passes


@pytest.mark.parametrize("norm,p", [("l2", 2), ("l1", 1)])
@pytest.mark.parametrize("method", ["grad", "grad_x_input"])
def test_token_saliency_matches_autograd_with_padding(model_dirs, family, encoded, norm, p, method):
    model = load_model(model_dirs[family])
    ids = [e.input_ids for e in encoded]
    assert len({len(x) for x in ids}) == 3  # three lengths: the batch is padded
    scores = token_saliency(model, ids, [e.response_mask for e in encoded], norm=norm, method=method, batch_size=3)
    ref_model = reference.eager_model(model_dirs[family])
    for sample, got in zip(encoded, scores):
        want, _ = reference.saliency(ref_model, sample.input_ids, sample.response_mask, p=p,
                                     x_input=method == "grad_x_input")
        assert got.dtype == torch.float32 and got.shape == (len(sample.input_ids),)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
        assert got[sample.prompt_mask].abs().sum() > 0


def test_loss_is_the_mean_response_nll(model_dirs, encoded, family):
    model = load_model(model_dirs[family])
    results = run(model, [e.input_ids for e in encoded],
                  HookPlan(saliency="grad", target_mask=[e.response_mask for e in encoded]))
    ref_model = reference.eager_model(model_dirs[family])
    for sample, result in zip(encoded, results):
        _, want = reference.saliency(ref_model, sample.input_ids, sample.response_mask)
        assert result.loss == pytest.approx(want, abs=1e-5)


def test_custom_loss_function_is_differentiated(model_dirs, samples):
    """A caller's loss: the summed (not mean) NLL scales every gradient by the number of target tokens."""
    model = load_model(model_dirs["llama"])
    ids, target = [e.input_ids for e in samples], [e.response_mask for e in samples]

    def summed_nll(logits, input_ids, mask):
        return mean_nll(logits, input_ids, mask) * mask[:, 1:].sum(-1)

    mean_scores = token_saliency(model, ids, target)
    sum_scores = token_saliency(model, ids, target, loss_fn=summed_nll)
    for sample, a, b in zip(samples, mean_scores, sum_scores):
        torch.testing.assert_close(b, a * int(sample.response_mask.sum()), rtol=RTOL, atol=1e-6)


def test_results_keep_input_order_whatever_the_batch_size(model_dirs, samples):
    model = load_model(model_dirs["qwen2"])
    ids, target = [e.input_ids for e in samples], [e.response_mask for e in samples]
    one = token_saliency(model, ids, target, batch_size=1)
    two = token_saliency(model, ids, target, batch_size=2)
    for a, b, sample in zip(one, two, samples):
        assert a.shape == (len(sample.input_ids),)
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_run_reports_each_batch(model_dirs, samples):
    """on_batch(n) after every batch: what leaf analyze's progress bar advances on."""
    from leaf.hooks import HookPlan, run

    model = load_model(model_dirs["qwen2"])
    ids, target = [e.input_ids for e in samples], [e.response_mask for e in samples]
    seen = []
    run(model, ids, HookPlan(saliency="grad", target_mask=target), batch_size=2, on_batch=seen.append)
    assert sum(seen) == len(ids) and len(seen) == -(-len(ids) // 2) and max(seen) <= 2


def test_mean_nll_matches_a_hand_computed_value():
    # Two positions, vocabulary 2: logits at t=0 predict token 1 (id 1), with p = e^2 / (e^0 + e^2).
    logits = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 0]])
    target = torch.tensor([[False, True, True]])
    want = (-torch.log(torch.tensor(torch.e**2 / (1 + torch.e**2))) - torch.log(torch.tensor(0.5))) / 2
    torch.testing.assert_close(mean_nll(logits, ids, target), want[None])


def test_bfloat16_model_gives_float32_scores_close_to_float32(model_dirs, samples):
    """The GPU dtype path on CPU: bf16 weights, scores and loss still computed in float32."""
    ids, target = [e.input_ids for e in samples], [e.response_mask for e in samples]
    full = token_saliency(load_model(model_dirs["qwen2"]), ids, target)
    half = token_saliency(load_model(model_dirs["qwen2"], dtype="bfloat16"), ids, target)
    for a, b in zip(full, half):
        assert b.dtype == torch.float32
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98


def test_token_nll_matches_cross_entropy_of_each_token(model_dirs, samples):
    model = load_model(model_dirs["gpt2"])
    results = run(model, [e.input_ids for e in samples], HookPlan(token_nll=True), batch_size=3)
    ref_model = reference.eager_model(model_dirs["gpt2"])
    for sample, result in zip(samples, results):
        ids = sample.input_ids
        with torch.no_grad():
            logits = ref_model(ids[None]).logits[0]
        want = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
        assert result.token_nll[0] == 0
        torch.testing.assert_close(result.token_nll[1:], want, atol=ATOL, rtol=RTOL)


def test_token_nll_chunks_agree():
    from leaf.hooks.reductions import token_nll

    logits = torch.randn(2, 9, 13, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(token_nll(logits, ids, chunk=2), token_nll(logits, ids, chunk=100))


def test_nll_on_kept_logit_positions_equals_the_full_computation():
    """The LM head run only where the loss needs it (logits_to_keep) gives the same per-sample NLL."""
    from leaf.hooks.reductions import logit_positions, mean_nll, mean_nll_at

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 11, generator=g)
    ids = torch.randint(0, 11, (3, 9), generator=g)
    target = torch.zeros(3, 9, dtype=torch.bool)
    target[0, 4:7], target[1, 2:3], target[2, 6:9] = True, True, True
    positions = logit_positions(target)
    assert positions.tolist() == [1, 3, 4, 5, 6, 7]
    assert torch.allclose(mean_nll_at(logits[:, positions], ids, target, positions), mean_nll(logits, ids, target))
