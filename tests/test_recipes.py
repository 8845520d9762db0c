"""recipes/: every shipped recipe parses and builds its four run configurations (no model loaded), its stages chain
(data -> analyze -> distill -> eval -> serve); --config on the CLI reads a recipe and flags override it; the data
preparation maps each source's rows correctly."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leaf.analyze import AnalyzeConfig
from leaf.cli import app
from leaf.distill import DistillConfig
from leaf.errors import LeafError
from leaf.eval import EvalConfig
from leaf.eval.tasks import get_task
from leaf.recipes import build_configs, read_recipe
from leaf.serve.run import ServeConfig

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
runner = CliRunner()


def test_the_recipes_cover_the_paper_and_a_budget_pairing():
    names = {p.stem for p in RECIPES}
    assert {"qwen2.5-math-1.5b-from-qwen2.5-72b", "qwen2.5-0.5b-from-qwen2.5-7b", "llama-3.2-1b-from-llama-3.3-70b",
            "llama-3.2-3b-from-llama-3.3-70b"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_builds_its_run_configurations(path):
    configs = build_configs(path)
    analyze, distill, evaluate, serve = configs["analyze"], configs["distill"], configs["eval"], configs["serve"]
    assert isinstance(analyze, AnalyzeConfig) and isinstance(distill, DistillConfig)
    assert isinstance(evaluate, EvalConfig) and isinstance(serve, ServeConfig)
    # the stages chain: distill reads analyze's output, serve compares the student before and after
    assert distill.data == analyze.output and distill.student == analyze.student
    assert serve.models[0] == analyze.student and serve.models[1] == str(distill.output / "final")
    assert len(serve.names) == len(serve.models)
    # eval: Pre-KD / KD / LeaF, the same student before and after each distillation, on data prepare_data.py makes
    assert evaluate.model_names()[:3] == ["pre-kd", "kd", "leaf"] and evaluate.models[0] == analyze.student
    assert evaluate.models[1:3] == [str(distill.output.parent / "distill-kd" / "final"), str(distill.output / "final")]
    meta = read_recipe(path)["recipe"]
    assert meta["name"] == path.stem and "prepare_data.py" in meta["data"] and meta["expected_gpu_hours"]
    assert meta["paper"]
    assert all(f"--output {folder}/{get_task(task).data_file}" in meta["data"] for task in evaluate.tasks
               for folder in evaluate.data)
    numbers = meta["paper_numbers"]   # beside leaf eval's table: every evaluated model the paper has a number for
    assert all(isinstance(v, (int, float)) for row in numbers.values() for v in row.values())
    assert numbers == {} if meta["setting"] == "budget" else {"pre-kd", "kd", "leaf"} <= set(numbers)
    header = [line.split(":")[0].strip("# ") for line in path.read_text().splitlines()
              if line.startswith("#   ") and ":" in line.split()[1]]
    assert header == ["data", "analyze", "distill", "eval", "serve"]
    if meta["setting"] == "paper":
        assert distill.lr == 1e-5 and distill.max_length == 4096 and distill.cache_teacher
        assert analyze.device_map == "auto" and analyze.gradient_checkpointing


def _tiny_recipe(tmp_path, suffix, pair, data):
    teacher, student = pair
    if suffix == ".toml":
        text = (f'[analyze]\nteacher = "{teacher}"\nstudent = "{student}"\ndata = "{data}"\n'
                f'output = "{tmp_path / "analyze"}"\nthreshold = "quantile"\nquantile = 0.2\nbatch-size = 2\n'
                f'gold_pair = "question,seed_question"\n')
    else:
        text = (f"analyze:\n  teacher: {teacher}\n  student: {student}\n  data: {data}\n"
                f"  output: {tmp_path / 'analyze'}\n  threshold: quantile\n  quantile: 0.2\n  batch-size: 2\n"
                f"  gold_pair: question,seed_question\n")
    path = tmp_path / f"recipe{suffix}"
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_cli_config_sets_flags_and_flags_override(tmp_path, suffix):
    from leaf.models.tiny import build_tiny_model
    from tests.shared import shortest_gsm_plus, write_jsonl

    pair = (str(build_tiny_model("llama", tmp_path / "t", seed=1)), str(build_tiny_model("llama", tmp_path / "s",
                                                                                         seed=2)))
    data = write_jsonl(tmp_path / "data.jsonl", shortest_gsm_plus(3))
    recipe = _tiny_recipe(tmp_path, suffix, pair, data)
    result = runner.invoke(app, ["analyze", "--config", str(recipe), "--limit", "2", "--quantile", "0.3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "analyze" / "summary.json").read_text())
    assert summary["config"]["threshold"] == "quantile" and summary["config"]["batch_size"] == 2   # the recipe
    assert summary["config"]["quantile"] == 0.3 and summary["counts"]["samples"] == 2           # the flags
    assert "--config" not in summary["command"] and "--threshold quantile" in summary["command"]


def test_bad_recipes_are_clean_errors(tmp_path):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('[analyze]\nthreshhold = "iqr"\n')
    result = runner.invoke(app, ["analyze", "--config", str(bad_key)])
    assert result.exit_code == 2 and "unknown key 'threshhold'" in _unboxed(result.output)
    broken = tmp_path / "broken.toml"
    broken.write_text("[analyze\n")
    assert "does not parse" in _unboxed(runner.invoke(app, ["distill", "--config", str(broken)]).output)
    with pytest.raises(LeafError, match="unknown section"):
        (tmp_path / "s.toml").write_text("[train]\nx = 1\n")
        read_recipe(tmp_path / "s.toml")
    missing = runner.invoke(app, ["serve", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "does not exist" in _unboxed(missing.output)


def _unboxed(text: str) -> str:
    """click's error box, as one line of words."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def test_prepare_data_maps_each_source():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data", RECIPES[0].parent / "prepare_data.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    gsm = prep.convert("gsm8k", {"question": "Tom has 3 apples and buys 4. How many?",
                                 "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}, 5)
    assert gsm == {"id": "gsm8k-5", "instruction": "Tom has 3 apples and buys 4. How many?",
                   "output": "He has 3 + 4 = 7 apples.\n#### 7", "answer": "7", "source": "gsm8k"}
    math = prep.convert("math", {"problem": "Find $x$ if $2x=6$.", "solution": "So $x=\\boxed{3}$.",
                                 "level": "Level 1", "type": "Algebra"}, 0)
    assert math["answer"] == "3" and math["source"] == "Algebra"
    m500 = prep.convert("math500", {"problem": "p", "solution": "s \\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}",
                                    "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"}, 0)
    assert m500["id"] == "test/algebra/1.json" and m500["answer"] == "\\frac{1}{2}"
    numina = prep.convert("numinamath", {"problem": "q", "solution": "no final answer here", "source": "olympiads",
                                         "messages": []}, 0)
    assert numina is None                                         # no readable answer: dropped (and counted)


def test_a_recipe_whose_data_is_missing_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's data/ does not exist here
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "qwen2.5-0.5b-from-qwen2.5-7b.toml"
    with monkeypatch.context() as patch:
        patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
        result = runner.invoke(app, ["analyze", "--config", str(recipe)])
    assert result.exit_code == 1
    text = _unboxed(result.output)
    assert "data/gsm8k_train.jsonl' does not exist" in text
    assert "The recipe's data is made by: python recipes/prepare_data.py --dataset gsm8k" in text


def test_prepare_data_maps_the_code_sources_to_rows_whose_tests_grade():
    """AceCode-87K, MBPP, MBPP+ and LiveCodeBench rows in their hub schemas -> leaf code rows whose tests pass the
    reference solution and fail a wrong one in the sandbox."""
    import base64
    import importlib.util
    import pickle
    import zlib

    from leaf.grading import Item, grade
    from leaf.programs import tests_of
    from leaf.sandbox import SandboxConfig

    spec = importlib.util.spec_from_file_location("prepare_data", RECIPES[0].parent / "prepare_data.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    ace = {"id": "oss_1", "source": "oss", "question": "Write `double(x)` returning 2x.",
           "test_cases": ["assert double(2) == 4", "assert double(-1) == -2"],
           "inferences": [{"completion": "Sure:\n```python\ndef double(x):\n    return x * 2\n```\nDone.",
                           "pass_rate": 1.0},
                          {"completion": "```python\ndef double(x):\n    return x + x\n```", "pass_rate": 1.0},
                          {"completion": "def double(x): return x", "pass_rate": 0.0}]}
    row = prep.convert_code("acecode", ace, 0)
    assert row["output"] == "```python\ndef double(x):\n    return x + x\n```"   # the shortest passing, fenced
    assert "Write `double(x)`" in row["instruction"] and row["tests"] == ace["test_cases"]
    assert prep.convert_code("acecode", {**ace, "inferences": ace["inferences"][2:]}, 1) is None   # none passes
    add = "def add(a, b):\n    return a + b"
    mbpp = prep.convert_code("mbpp", {"task_id": 7, "text": "Add two numbers.", "code": add,
                                      "test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""}, 0)
    plus = prep.convert_code("mbpp_plus", {"task_id": 7, "prompt": "Add two numbers.", "code": add,
                                           "test_list": ["assert add(1, 2) == 3"], "test_imports": ["import math"],
                                           "test": "assert add(2, 2) == 4\nassert math.isclose(add(0.1, 0.2), 0.3)"}, 0)
    private = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
        [{"input": "5\n", "output": "10\n", "testtype": "stdin"}])))).decode()
    stdin = prep.convert_code("livecodebench", {
        "question_id": "abc1", "question_content": "Read n, print 2n.", "platform": "atcoder", "starter_code": "",
        "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]),
        "private_test_cases": private, "metadata": "{}"}, 0)
    leetcode = prep.convert_code("livecodebench", {
        "question_id": "lc1", "question_content": "Return a + b.", "platform": "leetcode",
        "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
        "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
        "private_test_cases": "[]", "metadata": json.dumps({"func_name": "add"})}, 0)
    assert stdin["tests"] == [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10\n"}]
    rows = [row, mbpp, plus, stdin, leetcode]
    right = [row["output"], mbpp["output"], plus["output"], "print(2 * int(input()))",
             "class Solution:\n    def add(self, a, b):\n        return a + b"]
    wrong = ["def double(x):\n    return x", "def add(a, b):\n    return a - b",
             "def add(a, b):\n    return int(a + b)",
             "print(int(input()))", "class Solution:\n    def add(self, a, b):\n        return a * b"]
    sandbox = SandboxConfig(allow=True)
    tests = [tests_of(r, r["id"]) for r in rows]
    assert grade([Item(g, tests=t) for g, t in zip(right, tests)], sandbox) == [True] * 5
    assert grade([Item(g, tests=t) for g, t in zip(wrong, tests)], sandbox) == [False] * 5


@pytest.mark.parametrize("text, message", [
    ('[analyze]\nselect = "yes"\n', "select must be true or false, got 'yes'"),
    ("[analyze]\nverify = 1\n", "verify must be true or false, got 1"),
    ('[distill]\nmax_steps = "10"\n', "max_steps must be a whole number, got '10'"),
    ("[distill]\nlr = true\n", "lr must be a number, got True"),
    ("[analyze]\nteacher = 3\n", "teacher must be text (in quotes), got 3"),
    ("[analyze]\nmax_new_tokens = 64\n", "'max_new_tokens' is named 'max_tokens' (the flag --max-tokens)"),
    ('[serve]\nmodels = ["a"]\n', "'models' is named 'model' (the flag --model)"),
    ('[distill]\nlam = "0.5"\n', "'lam' is named 'lambda' (the flag --lambda)"),
])
def test_recipe_values_have_their_flags_names_and_types(tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    section = text.split("]")[0].strip("[")
    with pytest.raises(LeafError, match=re.escape(message)):
        from leaf.recipes import section_values

        section_values(recipe, section)


def test_every_flag_name_is_a_recipe_key():
    """The keys a recipe takes are exactly the flags' names (without dashes) of each command."""
    import typer

    from leaf.recipes import _config_classes, recipe_keys

    commands = typer.main.get_command(app).commands
    for section, config_class in _config_classes().items():
        flags = {opt.removeprefix("--").replace("-", "_") for param in commands[section].params
                 for opt in param.opts if opt.startswith("--")}
        keys = recipe_keys(config_class)
        assert set(keys) <= flags and len(keys) == len(set(keys.values())), (section, set(keys) - flags)
