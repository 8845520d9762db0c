"""`leaf doctor` on CPU: every stage runs on tiny models and passes, within the 2-minute budget; a failing check is a
failed row and exit code 1, and the stages that need it are skipped, not run."""

import json

from typer.testing import CliRunner

from leaf.cli import app
from leaf.doctor import Checks, DoctorConfig, run_doctor, run_stage


def test_doctor_passes_every_stage_on_cpu(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--json", "--keep", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["models", "saliency", "analyze", "distill", "serve", "eval"]
    assert all(s["status"] == "pass" for s in stages.values()), stages
    assert "allowed 0.0001" in stages["saliency"]["detail"] and "4 rows" in stages["analyze"]["detail"]
    assert report["versions"]["torch"] and report["versions"]["leaf"].startswith("0.1.0+")
    assert report["device"]["memory_gb"] > 0 and report["seconds"] < 120
    assert all(s["peak_mb"] > 0 for s in stages.values())
    assert (tmp_path / "work" / "distill" / "final" / "model.safetensors").exists()   # --keep keeps the folders


def test_a_failed_check_is_a_failed_row_and_its_dependants_are_skipped(monkeypatch):
    def broken(self):
        raise RuntimeError("no luck")

    monkeypatch.setattr(Checks, "analyze", broken)
    monkeypatch.setattr(Checks, "saliency", lambda self: "ok")
    report = run_doctor(DoctorConfig(), log=lambda _: None)
    stages = {s["name"]: s for s in report["stages"]}
    assert not report["ok"] and stages["analyze"]["status"] == "fail"
    assert stages["analyze"]["detail"].startswith("RuntimeError: no luck (test_doctor.py:")
    assert stages["distill"] == {**stages["distill"], "status": "skipped", "detail": "needs analyze"}
    assert stages["serve"]["status"] == stages["eval"]["status"] == "skipped"
    assert run_stage("x", lambda: "fine", "cpu").status == "pass"


def test_bad_doctor_options_are_clear_errors():
    result = CliRunner().invoke(app, ["doctor", "--dtype", "int8"])
    assert result.exit_code == 1 and "--dtype must be float32, bfloat16 or float16" in result.output


def test_doctor_in_bfloat16_on_cpu_and_saliency_against_float32():
    """bf16 end to end on CPU: saliency against bf16 autograd and against float32 (within 5e-2 of the largest score),
    analyze, distill (bf16 teacher, float32 student weights), serve and eval in bf16."""
    report = run_doctor(DoctorConfig(dtype="bfloat16"), log=lambda _: None)
    stages = {s["name"]: s for s in report["stages"]}
    assert report["ok"] and all(s["status"] == "pass" for s in stages.values()), stages
    assert "against float32 (allowed 0.05)" in stages["saliency"]["detail"]
