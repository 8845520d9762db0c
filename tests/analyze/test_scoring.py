"""Normalisation, Δ and every threshold mode against hand-computed cases; a mode is one registry entry."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from leaf.errors import LeafError
from leaf.analyze import thresholds
from leaf.analyze.detect import contexts
from leaf.analyze.scoring import delta, minmax
from leaf.analyze.thresholds import Flags, ThresholdContext, ThresholdMode, flag, list_thresholds


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
    assert list_thresholds() == ["iqr", "absolute", "quantile", "released", "random", "ppl"]
    with pytest.raises(LeafError, match="Unknown threshold mode 'otsu'. Available: iqr, absolute, quantile, released, random, ppl"):
        flag("otsu", torch.zeros(3), ThresholdContext())


def test_a_constant_delta_flags_nothing_in_any_mode():
    """Teacher = student gives Δ = 0 everywhere: no mode may flag (quantile used to flag its first 5%, absolute all);
    the baselines copy a gradient mode's count, which is then 0."""
    g = torch.rand(40, generator=torch.Generator().manual_seed(0))
    d = delta(g, g)
    assert torch.equal(d, torch.zeros(40))
    for count_mode in ("iqr", "quantile", "absolute"):
        config = SimpleNamespace(tau=0.1, quantile=0.05, baseline_count=count_mode)
        ctxs = contexts(config, d, torch.rand(40), seed=0)
        for mode in list_thresholds():
            assert not flag(mode, d, ctxs[mode]).mask.any(), (count_mode, mode)


def _toy(d: torch.Tensor, ctx: ThresholdContext) -> Flags:
    """A made-up mode: flag the tokens whose surprisal exceeds τ."""
    return Flags(ctx.surprisal > ctx.tau, ctx.tau)


def test_a_mode_is_one_registry_entry(monkeypatch, tmp_path):
    """A toy mode registered in THRESHOLDS alone, needing τ and the surprisal, is checked by AnalyzeConfig, handed
    what it needs by detect.contexts (and its count by the baselines, as a gradient mode), run by flag, and offered
    by `leaf analyze --threshold` (a fresh process: the CLI reads the registry at import)."""
    from leaf.analyze import AnalyzeConfig

    monkeypatch.setitem(thresholds.THRESHOLDS, "toy", ThresholdMode(_toy, needs=("tau", "surprisal")))
    paths = dict(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o")
    with pytest.raises(LeafError, match="--threshold toy needs --tau."):
        AnalyzeConfig(**paths, threshold="toy")
    with pytest.raises(LeafError, match="--baseline-count toy needs --tau."):
        AnalyzeConfig(**paths, baseline_count="toy")
    AnalyzeConfig(**paths, threshold="toy", baseline_count="toy", tau=0.5)
    assert "toy" in thresholds.gradient_modes() and "toy" not in thresholds.baseline_modes()

    d, surprisal = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.9, 0.7])
    ctxs = contexts(SimpleNamespace(tau=0.5, quantile=0.05, baseline_count="toy"), d, surprisal, seed=0)
    assert ctxs["toy"].tau == 0.5 and ctxs["toy"].surprisal is surprisal and ctxs["toy"].count is None
    assert flag("toy", d, ctxs["toy"]).mask.tolist() == [False, True, True]
    assert ctxs["random"].count == ctxs["ppl"].count == 2          # the baselines copy the toy's count
    assert not thresholds.THRESHOLDS["toy"].can_run(ThresholdContext(tau=0.5))  # no surprisal: left out

    code = ("from leaf.analyze import thresholds as t\n"
            "t.THRESHOLDS['toy'] = t.ThresholdMode(lambda d, ctx: None, needs=('tau',))\n"
            "from typer.testing import CliRunner\nfrom leaf.cli import app\n"
            "r = CliRunner().invoke(app, ['analyze', '--teacher', 't', '--student', 's', '--data', 'd.jsonl',\n"
            "                             '--output', 'o', '--threshold', 'toy'])\n"
            "print(r.exit_code, r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.startswith("1 ") and "--threshold toy needs --tau." in out.stdout, out.stdout + out.stderr


def test_a_mode_must_need_context_fields():
    with pytest.raises(ValueError, match="not fields of ThresholdContext"):
        ThresholdMode(_toy, needs=("tau", "temperature"))
