"""Cross-tokenizer distillation math against hand computations, and the identity with plain KD."""

import math

import pytest
import torch


from leaf.distill.cross_tokenizer import align_groups, cross_tokenizer_loss, group_log_probs, vocabulary_map
from leaf.distill.losses import forward_kl, kd_loss, logit_mask
from leaf.models.tiny import bpe_tokenizer, byte_tokenizer
from tests.tolerances import EPS32, kl_atol


def test_groups_close_where_both_tokenizations_end_at_the_same_character():
    # "Hello world!": teacher Hel|lo| world|!  student Hello| wor|ld!
    teacher = [(0, 3), (3, 5), (5, 11), (11, 12)]
    student = [(0, 5), (5, 9), (9, 12)]
    assert align_groups(student, teacher) == [([0], [0, 1]), ([1, 2], [2, 3])]
    assert align_groups(teacher, teacher) == [([i], [i]) for i in range(4)]
    # text only one side covers at the end joins a last group when both have tokens there
    assert align_groups([(0, 2), (2, 4)], [(0, 2), (2, 3)]) == [([0], [0]), ([1], [1])]
    assert align_groups([(0, 2)], [(0, 2), (2, 3)]) == [([0], [0])]


def test_vocabulary_map_pairs_entries_spelled_the_same():
    t, s = bpe_tokenizer(), byte_tokenizer()
    t_ids, s_ids = vocabulary_map(t, s, pairs=[(t.eos_token_id, s.eos_token_id)])
    tv = {i: tok for tok, i in t.get_vocab().items()}
    sv = {i: tok for tok, i in s.get_vocab().items()}
    assert t_ids[0] == t.eos_token_id and s_ids[0] == s.eos_token_id
    assert all(tv[a] == sv[b] for a, b in zip(t_ids[1:].tolist(), s_ids[1:].tolist()))
    assert len(set(t_ids.tolist())) == len(t_ids) and len(set(s_ids.tolist())) == len(s_ids)
    assert len(t_ids) == len(sv) < len(tv)   # the byte tokenizer's entries all exist in the BPE; its merges not


def test_same_tokenizer_gives_plain_kd_exactly():
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(1, 7, 20, generator=g), torch.randn(1, 7, 20, generator=g)
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[0, 3:7] = True                                      # response tokens 3..6, predicted from 2..5
    expected = kd_loss(s_logits, t_logits, logit_mask(mask))
    rows = torch.tensor([2, 3, 4, 5])
    ids = torch.arange(20)
    perm = torch.randperm(20, generator=g)                   # any order of the same vocabulary
    empty = torch.zeros(0, dtype=torch.long)
    t_logq = group_log_probs(t_logits[0, rows].log_softmax(-1), torch.arange(4), empty, empty, empty)
    s_logq = group_log_probs(s_logits[0, rows].log_softmax(-1), torch.arange(4), empty, empty, empty)
    loss = cross_tokenizer_loss(t_logq, s_logq, ids[perm], ids[perm])
    atol = kl_atol(t_logq, s_logq) / len(rows)             # the same KL, its terms summed in another order
    assert loss.mean() == pytest.approx(float(expected), rel=0, abs=atol)


def test_a_merged_group_by_hand():
    """Teacher spells a group with two tokens, the student with one: the teacher's distribution at the group's first
    token is scaled by the probability of its second token; the rest of the mass is one more outcome."""
    t_logp = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))   # rows: predictors of tokens 1 and 2
    s_logp = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    # teacher group: first token predicted by row 0; its later token (id 1) by row 1 -> scale 0.6
    t_logq = group_log_probs(t_logp, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
    assert torch.allclose(t_logq.exp(), torch.tensor([[0.30, 0.18, 0.12]]))
    s_logq = group_log_probs(s_logp, torch.tensor([0]), *(torch.zeros(0, dtype=torch.long),) * 3)
    # matched: teacher ids 0 and 1 <-> student ids 1 and 0; rest buckets: teacher 1 - 0.48, student 1 - 0.7
    loss = cross_tokenizer_loss(t_logq, s_logq, torch.tensor([0, 1]), torch.tensor([1, 0]), uld_weight=2.0)
    p, q = [0.30, 0.18, 0.52], [0.5, 0.2, 0.3]
    kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    uld = abs(0.12 - 0.3)                                   # the one unmatched entry on each side
    # against float64 arithmetic: the float32 KL's own rounding, and the ULD term's (two probabilities, 2 ulps each)
    atol = kl_atol(torch.log(torch.tensor([p])), torch.log(torch.tensor([q]))) + 2.0 * 4 * EPS32
    assert float(loss[0]) == pytest.approx(kl + 2.0 * uld, rel=0, abs=atol)
    assert float(cross_tokenizer_loss(t_logq, s_logq, torch.tensor([0, 1]), torch.tensor([1, 0]),
                                      uld_weight=0.0)[0]) == pytest.approx(kl, rel=0, abs=atol)


def test_gradients_reach_the_student_and_vanish_at_a_perfect_match():
    # float64: in float32 the rest bucket (1 - the matched mass, here ~0) carries rounding of order 1e-6
    t_logp = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64).log_softmax(-1)
    s_logits = t_logp.clone().requires_grad_(True)
    empty = torch.zeros(0, dtype=torch.long)
    ids = torch.arange(10)
    loss = cross_tokenizer_loss(group_log_probs(t_logp, torch.arange(3), empty, empty, empty),
                                group_log_probs(s_logits.log_softmax(-1), torch.arange(3), empty, empty, empty),
                                ids, ids, divergence=forward_kl).sum()
    loss.backward()
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and s_logits.grad.abs().max() < 1e-5
