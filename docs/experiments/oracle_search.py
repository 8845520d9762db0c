"""The search for a demo task in which the counterfactual term has something to teach (issue 13, point 2).

One variant of the demo task per call: a student (size, pre-training steps and data as given) is distilled from the
shipped demo teacher on a pool of problems in up to three settings with the same data, steps, batch, lr and seed,
and evaluated (HF greedy) on 1,000 distractor problems of the design split and their clean twins
(`leaf.demo.task.design_problems`: its own generator seed; never a problem of the demo's test or validation sets, and
the pool and the student's pre-training problems hold none of the design problems, as posed or as clean twins):

- kd: KD w/o mask (λ = 1);
- oracle: LeaF instr with the oracle counterfactual of every distractor problem (its clean twin), λ linear 0.8 -> 0.5;
- kd2x: KD with twice the batch (the forward passes of LeaF's two terms).

Paired bootstrap intervals against kd go to RUN/result.json; per-problem outcomes to RUN/items.json. The table of
what each variant gave is in docs/experiments/README.md.

    python docs/experiments/oracle_search.py w300 --student-steps 300 --settings kd,oracle,kd2x
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from leaf.demo.task import demo_splits, design_problems, held_out, student_problems, teacher_problems, texts
from leaf.demo.train import STUDENT_SIZE, encode, evaluate, new_model, train
from leaf.distill import DistillConfig, run_distill

from leaf.demo.run import ASSET_TEACHER as TEACHER
from leaf.demo.stats import paired_interval

ROOT = Path("runs/oracle-search")


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def boot(a, b):
    interval = paired_interval([a], [b])
    return interval.mean, interval.low, interval.high


def main():
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student-steps", type=int, default=1200)
    p.add_argument("--student-data", default="clean")  # clean | mixed
    p.add_argument("--student-size", default="64,2,2,256")
    p.add_argument("--pool", type=int, default=1500)
    p.add_argument("--pool-distractors", default="0,1,2")
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lam", default="linear:0.8:0.5")
    p.add_argument("--settings", default="kd,oracle")
    p.add_argument("--select", action="store_true", help="distil on teacher-right/student-wrong only")
    p.add_argument("--leak", type=float, default=0.0)
    p.add_argument("--max-problem-steps", type=int, default=3, help="problems take 1..N steps (teacher too)")
    p.add_argument("--teacher", default=None, help="teacher folder (default: the shipped one)")
    p.add_argument("--teacher-steps", type=int, default=0, help="train a teacher on 1..N-step problems first")
    a = p.parse_args()
    from leaf.models.tiny import TinySize

    h, l, nh, ff = (int(x) for x in a.student_size.split(","))
    size = TinySize(hidden_size=h, num_layers=l, num_heads=nh, num_kv_heads=nh, intermediate_size=ff,
                    max_positions=256)
    out = ROOT / a.name
    out.mkdir(parents=True, exist_ok=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    log = {"args": vars(a)}
    seed = a.seed
    teacher = Path(a.teacher) if a.teacher else TEACHER
    if a.teacher_steps:  # a teacher for 1..N-step problems, trained like the shipped one (leaf demo --retrain-teacher)
        from leaf.demo.train import TEACHER_SIZE

        teacher = ROOT / f"teacher-{a.max_problem_steps}-{a.teacher_steps}"
        if not (teacher / "leaf_demo_training.json").exists():
            new_model(teacher, TEACHER_SIZE, seed=1)
            from transformers import AutoTokenizer
            train(teacher, encode(AutoTokenizer.from_pretrained(teacher),
                                  teacher_problems(a.max_problem_steps)),
                  steps=a.teacher_steps, lr=2e-3, seed=0)
    # held out: the demo's test and validation sets of this seed (its --full sizes) and this search's own
    demo = demo_splits(seed, pool=0, validation=400, test=2000)
    test = design_problems(a.test, seed, texts(demo["test"]) | texts(demo["validation"]),
                           max_steps=a.max_problem_steps)
    held = texts(demo["test"]) | texts(demo["validation"]) | texts(test)
    student = ROOT / f"student-{a.student_steps}-{a.student_data}-{a.student_size}-{seed}-heldout"
    if not (student / "leaf_demo_training.json").exists():
        if student.exists():
            shutil.rmtree(student)
        new_model(student, size, seed=100 + seed)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(student)
        enc = encode(tok, student_problems(20000, seed, held, clean=a.student_data == "clean"),
                     clean=a.student_data == "clean")
        if a.student_steps > 0:
            train(student, enc, steps=a.student_steps, seed=seed)
        else:
            (student / "leaf_demo_training.json").write_text("{}")
    # the student is pre-trained on 1..3-step problems; the design problems and the pool take 1..max-problem-steps
    pool = held_out(a.pool, 1000 + seed, held, distractors=tuple(int(x) for x in a.pool_distractors.split(",")),
                    prefix="pool-", leak=a.leak, max_steps=a.max_problem_steps)
    t0 = time.time()
    res = {}

    def ev(name, folder):
        d = evaluate(folder, test)
        c = evaluate(folder, test, clean=True)
        res[name] = {"d": d, "c": c}
        print(f"{a.name} {name}: distractor {sum(d)/len(d):.3f} clean {sum(c)/len(c):.3f}", flush=True)

    ev("teacher", teacher)
    ev("pre", student)
    if a.select:
        tr = evaluate(teacher, pool)
        sr = evaluate(student, pool)
        pool = [q for q, t, s in zip(pool, tr, sr) if t and not s]
        print("selected", len(pool))
    rows = [q.as_record() for q in pool]
    data = jsonl(out / "pool.jsonl", rows)
    oracle = jsonl(out / "oracle.jsonl", [{**r, "question": r["seed_question"]} for r in rows if r["distractors"]])
    for setting in a.settings.split(","):
        folder = out / setting
        if folder.exists():
            shutil.rmtree(folder)
        common = dict(teacher=str(teacher), student=str(student), data=data, output=folder, max_steps=a.steps,
                      batch_size=a.batch, lr=a.lr, warmup=0.05, save_steps=10**6, seed=seed,
                      temperature=a.temperature)
        if setting == "kd":
            cfg = DistillConfig(mode="kd", lam="1.0", **common)
        elif setting == "kd2x":
            cfg = DistillConfig(mode="kd", lam="1.0", **{**common, "batch_size": 2 * a.batch})
        elif setting == "oracle":
            cfg = DistillConfig(mode="instr", lam=a.lam, counterfactuals=oracle, **common)
        elif setting == "oracle5":
            cfg = DistillConfig(mode="instr", lam="0.5", counterfactuals=oracle, **common)
        t = time.time()
        run_distill(cfg, progress=False)
        print(f"{setting} trained in {time.time()-t:.0f}s", flush=True)
        ev(setting, folder / "final")
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    names = list(res)
    summary = {n: {"d": sum(res[n]["d"]) / len(test), "c": sum(res[n]["c"]) / len(test)} for n in names}
    if "kd" in res:
        for n in names:
            if n not in ("kd", "pre"):
                summary[n]["d_vs_kd"] = boot(res[n]["d"], res["kd"]["d"])
                summary[n]["c_vs_kd"] = boot(res[n]["c"], res["kd"]["c"])
    log["summary"] = summary
    log["seconds"] = time.time() - t0
    (out / "result.json").write_text(json.dumps(log, indent=1))
    (out / "items.json").write_text(json.dumps(res))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
