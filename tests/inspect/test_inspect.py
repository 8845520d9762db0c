"""`leaf inspect` on an analyze folder: patching maps in both directions, per-head focus and attributions, as PNG
and JSON, for the chosen samples; bad input is a clean error."""

import json

import pytest
from typer.testing import CliRunner

from leaf.cli import app

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder_and_student(analyzed):
    """conftest's shared analyze run (quantile: every instruction has spans) and its student."""
    return analyzed.folder, analyzed.student


def _inspect(folder, out, *args) -> dict:
    """`leaf inspect` on an analyze folder; its index.json."""
    result = runner.invoke(app, ["inspect", "--analyze", str(folder), "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "index.json").read_text())


def test_inspect_writes_every_map_for_the_chosen_samples(folder_and_student, tmp_path):
    folder, student = folder_and_student
    out = tmp_path / "inspect"
    index = _inspect(folder, out, "--sample", "1", "--sample", "4", "--ig-steps", "4")
    assert [s["row"] for s in index["samples"]] == [1, 4] and index["model"] == str(student)
    for sample in index["samples"]:
        sub = out / f"sample-{sample['row']}"
        names = {p.name for p in sub.iterdir()}
        for component in ("resid", "attn", "mlp", "head"):
            for stem in (f"patching_{component}", f"patching_{component}_reverse"):
                assert {f"{stem}.png", f"{stem}.json"} <= names
                assert (sub / f"{stem}.png").read_bytes()[:8] == PNG
        resid = json.loads((sub / "patching_resid.json").read_text())
        assert len(resid["effect"]) == 2 and len(resid["effect"][0]) == len(resid["tokens"])   # layers x positions
        pruned = resid["alignment"]["pruned"]
        assert pruned and all(row[p] is None for row in resid["effect"] for p in pruned)     # never patched
        heads = json.loads((sub / "patching_head.json").read_text())
        assert len(heads["effect"][0]) == 4 and heads["columns"] == "head"                    # 4 heads
        focus = json.loads((sub / "head_focus.json").read_text())
        assert all(0 <= v <= 1 for row in focus["share_on_confounders"] for v in row)
        attributions = json.loads((sub / "attributions.json").read_text())
        assert set(attributions["scores"]) == {"attention_rollout", "saliency", "input_x_gradient",
                                               "integrated_gradients"}
        assert (sub / "attributions.png").read_bytes()[:8] == PNG


def test_inspect_defaults_and_errors(folder_and_student, tmp_path):
    folder, _ = folder_and_student
    out = tmp_path / "default"
    [sample] = _inspect(folder, out, "--count", "1", "--component", "resid", "--method", "grad_norm")["samples"]
    assert sorted(sample["files"]) == sorted(["patching_resid.json", "patching_resid.png", "patching_resid_reverse.json",
                                              "patching_resid_reverse.png", "head_focus.json", "head_focus.png",
                                              "attributions.json", "attributions.png"])
    missing = runner.invoke(app, ["inspect", "--analyze", str(tmp_path), "--output", str(out)])
    assert missing.exit_code == 1 and "is not a `leaf analyze` output: no samples.jsonl" in missing.output
    bad_row = runner.invoke(app, ["inspect", "--analyze", str(folder), "--output", str(out), "--sample", "99"])
    assert bad_row.exit_code == 1 and "No row 99" in bad_row.output
