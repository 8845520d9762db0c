"""What the demo's figures rest on: disjoint splits, controls that flag what the doc says, the oracle's
counterfactual, the compute column and the first-step KL read from distill's log, skipped settings that stay visible,
and sentences computed from the numbers."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from leaf.analyze.detect import contexts
from leaf.analyze.thresholds import flag, gradient_modes
from leaf.demo.task import demo_splits, design_problems, generate, student_problems, texts

FULL = dict(pool=1500, validation=400, test=2000)


@pytest.mark.parametrize("seed", [0, 4])
def test_splits_are_disjoint_as_posed_and_as_clean_twins(seed):
    splits = demo_splits(seed, **FULL)
    test, validation, pool = (texts(splits[k]) for k in ("test", "validation", "pool"))
    assert [len(splits[k]) for k in ("pool", "validation", "test")] == [1500, 400, 2000]
    assert not pool & test and not pool & validation and not validation & test
    held = test | validation
    assert not texts(student_problems(20000, seed, held)) & held
    assert not texts(design_problems(1000, seed, held)) & held
    # the check can fail: drawn without leaving anything out, the pool shares clean problems with the test set
    assert texts(generate(1500, 1000 + seed, prefix="pool-")) & test


def test_splits_keep_the_generator_s_problems_and_ids():
    splits = demo_splits(0, pool=50, validation=20, test=30)
    assert [p.question for p in splits["test"]] == [p.question for p in generate(30, 2000, distractors=(1, 2))]
    ids = [p.id for k in ("pool", "validation", "test") for p in splits[k]]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("count_mode", gradient_modes())
def test_random_and_ppl_flag_exactly_the_gradient_rule_s_count_on_the_same_delta(count_mode):
    rng = random.Random(0)
    config = SimpleNamespace(tau=0.2, quantile=0.1, baseline_count=count_mode)
    for trial in range(200):
        n = rng.randint(1, 40)
        values = [round(rng.random(), 1) if trial % 3 == 0 else rng.random() for _ in range(n)]  # ties too
        if trial % 5 == 0:
            values[rng.randrange(n)] = -3.0  # an outlier for iqr
        d = torch.tensor(values)
        surprisal = torch.tensor([rng.random() * 5 for _ in range(n)])
        ctx = contexts(config, d, surprisal, seed=trial)
        want = int(flag(count_mode, d, ctx[count_mode]).mask.sum())
        for baseline in ("random", "ppl"):
            assert int(flag(baseline, d, ctx[baseline]).mask.sum()) == want, (trial, baseline)


def test_the_oracle_counterfactual_is_the_clean_twin():
    from leaf.demo.experiment import oracle_rows

    problems = generate(60, 7)
    verified = [k % 4 != 0 for k in range(len(problems))]
    rows = oracle_rows(problems, verified)
    expected = [p for p, ok in zip(problems, verified) if ok and p.distractors]
    assert [r["id"] for r in rows] == [p.id for p in expected] and rows
    for row, p in zip(rows, expected):
        question = p.question
        for a, b in reversed(p.distractor_spans):
            question = question[:a] + question[b:]
        assert row["question"] == question == p.clean_question and row["solution"] == p.solution
        assert row["level"] == "instruction"


def test_compute_and_first_step_kl_read_distill_s_log(tmp_path):
    from leaf.demo.experiment import compute, first_step_kl

    lines = [{"step": 1, "kd_original": 1.25, "kd_counterfactual": None, "tokens": 100},
             {"step": 2, "kd_original": 1.0, "kd_counterfactual": 0.5, "tokens": 180},
             {"step": 2, "eval": True, "eval_loss": 9.0, "tokens": 999},
             {"step": 3, "kd_original": 0.75, "kd_counterfactual": 0.25, "tokens": 170}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    assert compute(log) == 450  # every optimizer step's tokens (originals + counterfactuals), no eval line
    assert first_step_kl(log) == {"original": 1.25, "counterfactual": 0.5, "counterfactual_step": 2}
    log.write_text(json.dumps({**lines[0], "kd_counterfactual": None}) + "\n")
    assert first_step_kl(log) == {"original": 1.25, "counterfactual": None, "counterfactual_step": None}


def _seed(seed, rng, accuracy, *, skipped=(), tokens=None, items=300):
    outcomes = {n: {s: [int(rng.random() < p) for _ in range(items)] for s in ("distractor", "clean")}
                for n, p in accuracy.items() if n not in skipped}
    tokens = tokens or {}
    rows = {n: {"forward_tokens": tokens.get(n, 1000), "counterfactuals": 0 if n.startswith("KD") else 10,
                "first_step_kl": {"original": 1.0, "counterfactual": None if n.startswith("KD") else 0.01,
                                  "counterfactual_step": None if n.startswith("KD") else 1}}
            for n in accuracy if n not in skipped}
    rows.update({n: {"counterfactuals": 0, "skipped": "0 counterfactuals kept"} for n in skipped})
    return {"seed": seed, "names": list(accuracy), "rows": rows}, outcomes


def test_a_skipped_setting_stays_in_the_table_and_the_verdict_names_what_it_prevented():
    from leaf.demo.report import aggregate

    rng = random.Random(3)
    acc = {"KD w/o mask": 0.4, "KD 2x batch": 0.42, "LeaF instr": 0.4, "Random mask": 0.4, "Oracle": 0.4}
    seeds = [_seed(0, rng, acc, skipped=("Oracle",)), _seed(1, rng, acc)]
    result = aggregate([s for s, _ in seeds], [o for _, o in seeds])
    assert list(result["table"]) == ["KD w/o mask", "KD 2x batch", "LeaF instr", "Random mask", "Oracle"]
    assert result["table"]["Oracle"] == {"skipped": "skipped (0 counterfactuals kept) in seed(s) 0"}
    assert result["not_compared"]["Oracle vs KD w/o mask"] == "Oracle skipped (0 counterfactuals kept) in seed(s) 0"
    assert "Not compared: Oracle vs KD w/o mask (Oracle skipped" in result["verdict"]
    assert "Oracle vs KD w/o mask" not in result["comparisons"]


def test_the_markdown_keeps_a_skipped_row_and_prints_the_run_s_own_figures():
    from leaf.demo.report import aggregate, results_markdown

    rng = random.Random(4)
    acc = {"KD w/o mask": 0.4, "KD 2x batch": 0.42, "LeaF instr": 0.4, "Random mask": 0.4, "Oracle": 0.4}
    seed, outcomes = _seed(0, rng, acc, skipped=("Oracle",))
    seed.update(engine="hf", timing={"student": 61.0, "distill": 125.0}, variant="paper", detection_validation={},
                head={"layer": 0, "head": 1, "wrong_share": 0.3, "right_share": 0.2},
                parameters={"teacher": 1090688, "student": 151872},
                splits={"test": 300, "validation": 40, "pool": 100,
                        "test_seen_by_teacher": {"distractor": 0, "clean_twin": 7}},
                selection={"pool": 100, "analysed": 50, "clean_mixed_in": 25, "counterfactuals_kept": 30,
                           "counterfactuals_dropped": 5})
    result = aggregate([seed], [outcomes])
    text = results_markdown({**result, "per_seed": [seed], "preset": "quick", "seconds": 190.0})
    assert "| Oracle | skipped (0 counterfactuals kept) |" in text
    assert "- Oracle vs KD w/o mask: not compared (Oracle skipped (0 counterfactuals kept))" in text
    assert "Parameters: teacher 1,090,688, student 151,872." in text
    assert "student 1 min 1 s, distill 2 min 5 s; all stages 3 min 6 s; this invocation 3 min 10 s" in text
    assert "| LeaF instr | 1.0000 | 0.0100 | 1.0 |" in text and "| KD w/o mask | 1.0000 | - | - |" in text
    assert "hold 0 of the test problems as posed and 7 of their clean twins" in text


def test_the_compute_claim_is_read_off_the_compute_column():
    from leaf.demo.report import compute_claim

    table = {"KD w/o mask": {"forward_tokens": 1000}, "KD 2x batch": {"forward_tokens": 2000},
             "LeaF instr": {"forward_tokens": 1160, "counterfactuals": 5},
             "LeaF instr+resp": {"forward_tokens": 1500, "counterfactuals": 9}}
    claim = compute_claim(table)
    assert "2.00x" in claim and "LeaF instr+resp's 1.50x" in claim and "an upper bound" in claim
    table["Oracle"] = {"forward_tokens": 2300, "counterfactuals": 9}
    claim = compute_claim(table)
    assert "fewer than Oracle's 2.30x: not an upper bound" in claim and "an upper bound on every" not in claim
    assert compute_claim({"KD w/o mask": {"forward_tokens": 1000}}) is None


def test_the_one_seed_power_caveat_comes_from_the_power_formula():
    from leaf.demo.report import results_markdown
    from leaf.demo.stats import detectable_difference

    p = {"comparison": "LeaF instr vs KD w/o mask", "discordance": 0.1, "between_seed_variance": 0.0, "seeds": 1,
         "items_per_seed": 1000, "detectable_difference": detectable_difference(0.1, 1000, 1),
         "items_needed_5_seeds": 400, "target_difference": 0.02}
    seed = {"seed": 0, "engine": "hf", "timing": {}, "variant": "paper", "detection_validation": {},
            "head": {"layer": 0, "head": 0, "wrong_share": 0.3, "right_share": 0.2}, "rows": {},
            "selection": {"pool": 1, "analysed": 1, "clean_mixed_in": 0, "counterfactuals_kept": 0,
                          "counterfactuals_dropped": 0}}
    row = {"distractor_accuracy": {"mean": 0.5, "low": 0.4, "high": 0.6, "items": 1000},
           "clean_accuracy": {"mean": 0.5, "low": 0.4, "high": 0.6, "items": 1000}}
    text = results_markdown({"table": {"KD w/o mask": row}, "comparisons": {}, "verdict": "", "power": p,
                             "per_seed": [seed], "preset": "default", "seconds": 1.0})
    with_spread = detectable_difference(0.1, 1000, 1, 0.1 / 1000)
    assert f"the detectable difference would be {100 * with_spread:.1f} points" in text
    assert "roughly doubles" not in text


def test_a_demo_seed_reruns_its_stages_when_the_code_changed(tmp_path):
    from leaf.demo.run import ASSET_TEACHER, DemoConfig, prepare_seed_folder
    from leaf.run_folder import code_version

    if not ASSET_TEACHER.exists():
        pytest.skip("the shipped demo teacher is missing")
    config = DemoConfig(output=tmp_path, quick=True)
    out = prepare_seed_folder(config, ASSET_TEACHER, 0, print)
    stored = json.loads((out / "settings.json").read_text())
    assert stored["code"] == code_version() and len(stored["teacher_sha256"]) == 64
    (out / "analyze").mkdir()
    (out / "analyze" / "summary.json").write_text("{}")       # a finished stage
    prepare_seed_folder(config, ASSET_TEACHER, 0, print)                        # same code: kept
    assert (out / "analyze" / "summary.json").exists()
    (out / "settings.json").write_text(json.dumps({**stored, "code": "0.0.1+000000000000"}))
    said = []
    prepare_seed_folder(config, ASSET_TEACHER, 0, said.append)                  # other code: every stage runs again
    assert not (out / "analyze").exists() and "its stages run again" in said[0]
    assert json.loads((out / "settings.json").read_text())["code"] == code_version()
