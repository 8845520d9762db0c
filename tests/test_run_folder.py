"""leaf.run_folder.check_run_folder: the one rule analyze, distill and serve apply to --output (never overwrite
another run or other files; --resume only with the same settings), checked case by case."""

import json
from pathlib import Path

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


def test_code_version_digests_the_source_and_enters_every_fingerprint(tmp_path, monkeypatch):
    """leaf's version + a digest of its .py files and templates (not the demo's weights): a change to any source
    file changes it; analyze, distill, serve and the demo record it in their fingerprints."""
    import importlib.util
    import shutil
    from types import SimpleNamespace

    import leaf.run_folder as run_folder
    from leaf.run_folder import code_version

    version = code_version()
    assert version.startswith("0.1.0+") and len(version) == len("0.1.0+") + 12 and code_version() == version
    roots = {name: Path(next(iter(importlib.util.find_spec(name).submodule_search_locations)))
             for name in ("leaf", "leaf.hooks", "leaf.serve")}
    copies = {}
    for name, root in roots.items():
        copies[name] = tmp_path / name
        shutil.copytree(root, copies[name], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: SimpleNamespace(submodule_search_locations=[str(copies[name])]))
    try:
        run_folder.code_version.cache_clear()
        assert code_version() == version                                   # the same source
        (copies["leaf"] / "demo" / "weights.safetensors").write_bytes(b"\0" * 8)
        run_folder.code_version.cache_clear()
        assert code_version() == version                                   # data is not code
        target = copies["leaf.serve"] / "report.py"
        target.write_text(target.read_text() + "\n# a comment\n")
        run_folder.code_version.cache_clear()
        assert code_version() != version                                   # any source byte
    finally:
        monkeypatch.undo()
        run_folder.code_version.cache_clear()
    assert code_version() == version


def test_every_stage_fingerprint_holds_the_code_version(tmp_path):
    from leaf.distill import DistillConfig
    from leaf.run_folder import code_version
    from leaf.serve import ServeConfig

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1 + 1 ?", "solution": "#### 2"}) + "\n")
    model = tmp_path / "model"
    model.mkdir()
    distill = DistillConfig(teacher=str(model), student=str(model), data=data, output=tmp_path / "d")
    serve = ServeConfig(models=[str(model)], data=data, output=tmp_path / "s")
    assert distill.fingerprint()["code"] == serve.fingerprint()["code"] == code_version()
