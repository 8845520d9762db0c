"""Code benchmarks in `leaf eval` (HumanEval, MBPP and their EvalPlus versions): lm-evaluation-harness's own tasks
(prompts, stop sequences, answer post-processing), only the executor swapped for leaf's sandbox.

lm-eval's code tasks score with Hugging Face evaluate's `code_eval` metric, which their utils.py loads from the hub
when the task is imported (`evaluate.load("code_eval")`: impossible offline) and which runs programs with
`exec` in forked workers. `sandbox_executor` replaces that one call while the harness runs: `evaluate.load` returns
`SandboxCodeEval`, whose `compute(references, predictions, k)` has code_eval's interface (program = candidate +
"\\n" + test, results per problem, pass@k from the unbiased estimator) and runs each program in leaf.sandbox.

With --samples N > 1 the task YAML asks for N generations per problem (`repeats`) and scores them with
`pass_at_k` below (pass@1, pass@10, ... for k <= N), the same estimator, for every code task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_SANDBOX = None  # the SandboxConfig of the running `leaf eval` (set by sandbox_executor)


class SandboxCodeEval:
    """Stands in for evaluate's code_eval metric: the same call, programs run in leaf's sandbox."""

    def __init__(self, sandbox) -> None:
        self.sandbox = sandbox

    def compute(self, references: list[str], predictions: list[list[str]], k: list[int] | int = (1, 10, 100),
                num_workers: int = 4, timeout: float = 3.0) -> tuple[dict[str, float], dict]:
        """code_eval's contract: predictions[i] are candidate programs for the problem whose test is
        references[i]; returns ({"pass@k": mean over problems}, {i: [(j, {"passed", "result"})]})."""
        from leaf.programs import pass_at_k
        from leaf.sandbox import run_programs

        ks = [k] if isinstance(k, int) else list(k)
        programs = [(i, j, f"{candidate}\n{references[i]}") for i, candidates in enumerate(predictions)
                    for j, candidate in enumerate(candidates)]
        self.sandbox.require("This code benchmark", len(programs))
        runs = run_programs([p[2] for p in programs], limits=self.sandbox.limits, isolation=self.sandbox.isolation,
                            workers=self.sandbox.workers)
        results: dict[int, list] = {i: [] for i in range(len(predictions))}
        for (i, j, _), run in zip(programs, runs):
            results[i].append((j, {"passed": run.passed, "result": run.status, "task_id": i, "completion_id": j}))
        totals = [len(results[i]) for i in results]
        correct = [sum(r["passed"] for _, r in results[i]) for i in results]
        scores = {f"pass@{kk}": sum(pass_at_k(n, c, kk) for n, c in zip(totals, correct)) / len(totals)
                  for kk in ks if totals and all(n >= kk for n in totals)}
        return scores, results


@contextlib.contextmanager
def sandbox_executor(sandbox) -> Iterator[None]:
    """While the harness runs: evaluate.load("code_eval") gives SandboxCodeEval; every other metric loads as
    usual. Restored on exit."""
    global _SANDBOX
    import evaluate

    real = evaluate.load

    def load(path: str, *args, **kwargs):
        if path == "code_eval" or str(path).rstrip("/").endswith("/code_eval"):
            return SandboxCodeEval(sandbox)
        return real(path, *args, **kwargs)

    evaluate.load, _SANDBOX = load, sandbox
    try:
        yield
    finally:
        evaluate.load, _SANDBOX = real, None


# -- the metric and filter of --samples N (referenced from the generated task YAML) ---------------------------------
def keep_all(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """A filter that keeps every sample (a task without a filter of its own would score only the first)."""
    return resps


def pass_at_k(references: list[str], predictions: list, k: list[int] | None = None) -> dict[str, float]:
    """pass@k of one problem's samples (predictions[0]: its candidate programs, or one program)."""
    candidates = predictions[0] if isinstance(predictions[0], list) else list(predictions)
    scores, _ = SandboxCodeEval(_SANDBOX).compute(references=references, predictions=[candidates], k=k or [1])
    return scores
