"""leaf.run_folder.check_run_folder: the one rule analyze, distill and serve apply to --output (never overwrite
another run or other files; --resume only with the same settings), checked case by case."""

import json

import pytest

from leaf.errors import LeafError
from leaf.run_folder import check_run_folder


def test_the_run_folder_rule(tmp_path):
    out, settings = tmp_path / "run", {"lr": 1e-4, "data_sha256": "a"}
    manifest = out / "manifest.json"
    assert check_run_folder(out, manifest, settings, resume=False, what="an analyze") is False   # absent
    out.mkdir()
    assert check_run_folder(out, manifest, settings, resume=False, what="an analyze") is False   # empty
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LeafError, match="exists and is not empty. Choose a new --output"):
        check_run_folder(out, manifest, settings, resume=True, what="an analyze")
    assert check_run_folder(out, manifest, settings, resume=False, what="x", ignore=(out / "notes.txt",)) is False
    (out / "notes.txt").unlink()
    manifest.write_text(json.dumps(settings))
    with pytest.raises(LeafError, match="already holds an analyze run. Pass --resume"):
        check_run_folder(out, manifest, settings, resume=False, what="an analyze")
    assert check_run_folder(out, manifest, settings, resume=True, what="an analyze") is True
    with pytest.raises(LeafError, match=r"Cannot --resume .* \(differs in: data_sha256 \(a there, b now\), "
                                        r"lr \(0.0001 there, 0.001 now\)\)"):
        check_run_folder(out, manifest, {"lr": 1e-3, "data_sha256": "b"}, resume=True, what="an analyze")
    # a claimed folder whose run has not started (distill's --cache-only) continues without --resume
    assert check_run_folder(out, manifest, settings, resume=False, what="a distill", needs_resume=False) is True
    # ... and other settings there are refused for what was asked: no --resume, so no "Cannot --resume"
    with pytest.raises(LeafError, match=r"^\S+ holds a distill run with different settings or data \(differs in: lr"):
        check_run_folder(out, manifest, {**settings, "lr": 1.0}, resume=False, what="a distill", needs_resume=False)
    # serve: a folder of an earlier serve run (no fingerprint) is measured again
    assert check_run_folder(out, manifest, None, resume=True, what="a serve") is True
