"""One grader for every stage that scores generations (serve's accuracy, analyze's --select and --verify): a row
with tests passes when its program passes them in leaf's sandbox (pass@1 of a greedy answer); any other row when
its final answer matches the reference (leaf.answers: math-verify, regex fallback).

    verdicts = grade([Item(text, answer=None, tests=tests), Item(text2, answer="42")], sandbox)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leaf.programs import CodeTests


@dataclass
class Item:
    generation: str
    answer: str | None = None        # math: the reference answer
    tests: CodeTests | None = None   # code: the tests (they decide; the answer is not read)


def grade(items: Sequence[Item], sandbox=None, *, description: str = "grading code answers",
          progress: bool = False) -> list[bool | None]:
    """Per item: True / False, or None when there is nothing to grade against (no answer, no tests). Code items
    need `sandbox` (leaf.sandbox.SandboxConfig) with permission to run; math items never run anything."""
    from leaf.answers import is_correct
    from leaf.programs import grade_code, solution_code

    verdicts: list[bool | None] = [None] * len(items)
    code = [k for k, item in enumerate(items) if item.tests is not None]
    if code:
        if sandbox is None:
            from leaf.sandbox import SandboxConfig

            sandbox = SandboxConfig()
        tests = [items[k].tests for k in code]
        results = grade_code([solution_code(items[k].generation, t) for k, t in zip(code, tests)], tests, sandbox,
                             progress=progress, description=description)
        for k, result in zip(code, results):
            verdicts[k] = result.passed
    for k, item in enumerate(items):
        if item.tests is None and item.answer:
            verdicts[k] = is_correct(item.generation, item.answer)
    return verdicts
