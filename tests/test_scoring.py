"""Normalisation, Δ and every threshold mode against hand-computed cases."""

import pytest
import torch

from leaf.errors import LeafError
from leaf.analyze.scoring import ThresholdContext, delta, flag, list_thresholds, minmax


def test_minmax_hand_values_and_degenerate_vectors():
    torch.testing.assert_close(minmax(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(minmax(torch.tensor([5.0, 5.0, 5.0])), torch.zeros(3))   # constant: zeros, not NaN
    assert torch.equal(minmax(torch.tensor([7.0])), torch.zeros(1))             # single token
    assert minmax(torch.tensor([])).numel() == 0


def test_delta_is_normalised_teacher_minus_student():
    teacher = torch.tensor([1.0, 3.0, 2.0])   # -> [0, 1, .5]
    student = torch.tensor([10.0, 0.0, 5.0])  # -> [1, 0, .5]
    # raw difference [-1, 1, 0] -> normalised [0, 1, .5]: token 0 is the student-only one
    torch.testing.assert_close(delta(teacher, student), torch.tensor([0.0, 1.0, 0.5]))


def test_iqr_flags_low_outliers_only():
    d = torch.tensor([0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0])
    q1, q3 = torch.quantile(d, 0.25), torch.quantile(d, 0.75)   # 0.6375, 0.825 (linear interpolation)
    tau = float(q1 - 1.5 * (q3 - q1))                          # 0.35625
    flags = flag("iqr", d, ThresholdContext())
    assert flags.threshold == pytest.approx(tau)
    assert flags.mask.tolist() == [True] + [False] * 7
    assert not flag("iqr", torch.tensor([0.5, 0.6, 0.7]), ThresholdContext()).mask.any()  # too few to judge


def test_absolute_is_inclusive_and_needs_tau():
    d = torch.tensor([0.05, 0.1, 0.2])
    assert flag("absolute", d, ThresholdContext(tau=0.1)).mask.tolist() == [True, True, False]
    with pytest.raises(LeafError, match="needs --tau"):
        flag("absolute", d, ThresholdContext())


def test_quantile_flags_the_lowest_ceil_fraction():
    d = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0, 0.0])
    flags = flag("quantile", d, ThresholdContext(quantile=0.2))   # ceil(0.2 * 11) = 3 -> 0.0, 0.1, 0.2
    assert flags.mask.nonzero().flatten().tolist() == [1, 5, 10]


def test_random_baseline_copies_the_count_and_is_seeded():
    d = torch.linspace(0, 1, 20)
    a = flag("random", d, ThresholdContext(count=4, generator=torch.Generator().manual_seed(3))).mask
    b = flag("random", d, ThresholdContext(count=4, generator=torch.Generator().manual_seed(3))).mask
    assert int(a.sum()) == 4 and torch.equal(a, b)


def test_ppl_baseline_flags_the_most_surprising_tokens():
    d = torch.zeros(5)
    surprisal = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0])
    assert flag("ppl", d, ThresholdContext(count=2, surprisal=surprisal)).mask.tolist() == [
        False, True, False, True, False]


def test_unknown_mode_lists_the_registry():
    assert list_thresholds() == ["iqr", "absolute", "quantile", "random", "ppl"]
    with pytest.raises(LeafError, match="Unknown threshold mode 'otsu'. Available: iqr, absolute, quantile, random, ppl"):
        flag("otsu", torch.zeros(3), ThresholdContext())


def test_a_constant_delta_flags_nothing_in_any_mode():
    """Teacher = student gives Δ = 0 everywhere: no mode may flag (quantile used to flag its first 5%, absolute all);
    the baselines copy a gradient mode's count, which is then 0."""
    from types import SimpleNamespace

    from leaf.analyze.detect import contexts
    from leaf.analyze.scoring import delta, flag, list_thresholds

    g = torch.rand(40, generator=torch.Generator().manual_seed(0))
    d = delta(g, g)
    assert torch.equal(d, torch.zeros(40))
    for count_mode in ("iqr", "quantile", "absolute"):
        config = SimpleNamespace(tau=0.1, quantile=0.05, baseline_count=count_mode)
        ctxs = contexts(config, d, torch.rand(40), seed=0)
        for mode in list_thresholds():
            assert not flag(mode, d, ctxs[mode]).mask.any(), (count_mode, mode)
