"""Stage 2 loss math by identities and hand computation, no trainer involved."""

import math

import pytest
import torch

from leaf.errors import LeafError
from leaf.distill.losses import (forward_kl, get_divergence, hybrid_loss, jsd, kd_loss, kd_loss_from_cache, lambda_at,
                         list_divergences, logit_mask, reverse_kl, teacher_topk)
from tests.tolerances import kl_atol


def _logits(seed, shape=(3, 7, 11), scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _mask():
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2:6] = True
    mask[1, 0:3] = True
    mask[2, 5] = True
    return mask


def test_forward_kl_matches_a_hand_computation():
    # one position, vocabulary 2: p_T = (0.5, 0.5) from logits (0, 0); p_S = softmax(0, ln 3) = (0.25, 0.75)
    student = torch.tensor([[[0.0, math.log(3.0)]]])
    teacher = torch.zeros(1, 1, 2)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    got = kd_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool))
    assert float(got) == pytest.approx(want, abs=1e-6)
    rev = kd_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool), divergence=reverse_kl)
    assert float(rev) == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5), abs=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_logits_give_zero(name):
    logits = _logits(0)
    assert torch.allclose(kd_loss(logits, logits, _mask(), divergence=get_divergence(name)), torch.zeros(3), atol=1e-6)


def test_per_sample_mean_over_selected_positions_matches_torch_kl_div():
    student, teacher, mask = _logits(1), _logits(2), _mask()
    got = kd_loss(student, teacher, mask)
    for b in range(3):
        rows = mask[b].nonzero().flatten()
        want = torch.nn.functional.kl_div(student[b, rows].log_softmax(-1), teacher[b, rows].log_softmax(-1),
                                          reduction="none", log_target=True).sum(-1).mean()
        atol = kl_atol(teacher[b, rows].log_softmax(-1), student[b, rows].log_softmax(-1)) / len(rows)
        assert float(got[b]) == pytest.approx(float(want), rel=0, abs=atol)


def test_chunked_equals_unchunked():
    student, teacher, mask = _logits(3), _logits(4), _mask()
    torch.testing.assert_close(kd_loss(student, teacher, mask, chunk_size=1),
                               kd_loss(student, teacher, mask, chunk_size=10_000))


def test_temperature_softens_both_and_scales_by_t_squared():
    student, teacher, mask = _logits(5), _logits(6), _mask()
    got = kd_loss(student, teacher, mask, temperature=2.0)
    want = kd_loss(student / 2.0, teacher / 2.0, mask) * 4.0
    torch.testing.assert_close(got, want)


def test_jsd_limits_and_symmetry():
    student, teacher, mask = _logits(7, scale=0.5), _logits(8, scale=0.5), _mask()
    fwd, rev = kd_loss(student, teacher, mask), kd_loss(student, teacher, mask, divergence=reverse_kl)
    # the limits converge as O(β), with a coefficient that grows with the distance between the distributions
    small = kd_loss(student, teacher, mask, divergence=jsd(1e-3)) / 1e-3
    large = kd_loss(student, teacher, mask, divergence=jsd(1 - 1e-3)) / 1e-3
    torch.testing.assert_close(small, fwd, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(large, rev, rtol=1e-2, atol=1e-4)
    half = kd_loss(student, teacher, mask, divergence=jsd(0.5))
    torch.testing.assert_close(half, kd_loss(teacher, student, mask, divergence=jsd(0.5)))  # symmetric
    assert (half <= math.log(2) + 1e-6).all() and (half[mask.any(1)] > 0).all()


def test_a_padded_teacher_vocabulary_is_cut_to_the_shared_ids():
    student, mask = _logits(9), _mask()
    padded = torch.cat([student, torch.full((3, 7, 5), 50.0)], -1)   # huge logits on ids the student lacks
    assert torch.allclose(kd_loss(student, padded, mask), torch.zeros(3), atol=1e-6)


def test_mask_shift_first_response_token_is_predicted_from_the_last_prompt_position():
    tokens = torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.bool)   # prompt 0-2, response 3-4, pad 5
    assert logit_mask(tokens).tolist() == [[False, False, True, True, False, False]]


def test_topk_cache_with_k_equal_to_vocab_equals_online():
    student, teacher, mask = _logits(10), _logits(11), _mask()
    for name in list_divergences():
        divergence = get_divergence(name)
        values, ids = teacher_topk(teacher, mask, k=11, temperature=2.0)
        cached = kd_loss_from_cache(student, mask, values, ids, divergence=divergence, temperature=2.0)
        online = kd_loss(student, teacher, mask, divergence=divergence, temperature=2.0)
        torch.testing.assert_close(cached, online, atol=1e-5, rtol=1e-5)


def test_topk_cache_counts_the_tail_mass_and_has_finite_gradients():
    student, teacher, mask = _logits(12).requires_grad_(True), _logits(13), _mask()
    values, ids = teacher_topk(teacher, mask, k=3)
    cached = kd_loss_from_cache(student, mask, values, ids)
    # the bucketed KL is at most the full KL (merging outcomes never increases KL) and above zero
    online = kd_loss(student.detach(), teacher, mask)
    assert (cached <= online + 1e-6).all() and (cached[mask.any(1)] > 0).all()
    cached.sum().backward()
    assert torch.isfinite(student.grad).all()
    full_values, full_ids = teacher_topk(teacher, mask, k=11)
    student.grad = None
    kd_loss_from_cache(student, mask, full_values, full_ids).sum().backward()
    assert torch.isfinite(student.grad).all()
    with pytest.raises(LeafError, match="cache has"):
        kd_loss_from_cache(student, mask[:, :2], values, ids)


def test_hybrid_loss_identities():
    original, counterfactual = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    has = torch.tensor([True, False, True])
    assert float(hybrid_loss(original, counterfactual, has, 1.0)) == pytest.approx(2.0)     # λ = 1: plain KD
    # λ = 0.5: (0.5·1 + 0.5·10, 2 (no counterfactual), 0.5·3 + 0.5·30) averaged
    assert float(hybrid_loss(original, counterfactual, has, 0.5)) == pytest.approx((5.5 + 2.0 + 16.5) / 3)


def test_lambda_schedules():
    assert lambda_at("0.7", 5, 10) == 0.7 and lambda_at(0.3, 0, 10) == 0.3
    assert lambda_at("linear:0.8:0.5", 0, 11) == pytest.approx(0.8)
    assert lambda_at("linear:0.8:0.5", 5, 11) == pytest.approx(0.65)
    assert lambda_at("linear:0.8:0.5", 10, 11) == pytest.approx(0.5)
    assert lambda_at("cosine:0.8:0.5", 0, 11) == pytest.approx(0.8)
    assert lambda_at("cosine:0.8:0.5", 5, 11) == pytest.approx(0.65)
    assert lambda_at("cosine:0.8:0.5", 10, 11) == pytest.approx(0.5)
    with pytest.raises(LeafError, match="Unknown λ schedule 'step'"):
        lambda_at("step:1:0", 0, 3)
    with pytest.raises(LeafError, match="Unknown divergence 'tvd'. Available: forward_kl, reverse_kl, jsd"):
        get_divergence("tvd")
    assert forward_kl is get_divergence("forward_kl")
