"""One grader for every stage that scores generations (serve's accuracy, analyze's --select and --verify): a row
with tests passes when its program passes them in leaf's sandbox (pass@1 of a greedy answer); any other row when
its final answer matches the reference (leaf.answers: math-verify, regex fallback).

    verdicts = grade([Item(text, answer=None, tests=tests), Item(text2, answer="42")], sandbox)
    graded = grade_detailed(items, sandbox)   # the same verdicts, each math one with its leaf.answers.Check
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


@dataclass
class Graded:
    correct: bool | None               # None: nothing to grade against
    check: object | None = None        # math: the leaf.answers.Check that decided (answer read, checker, fallback)


def grade(items: Sequence[Item], sandbox=None, *, description: str = "grading code answers",
          progress: bool = False) -> list[bool | None]:
    """Per item: True / False, or None when there is nothing to grade against (no answer, no tests). Code items
    need `sandbox` (leaf.sandbox.SandboxConfig) with permission to run; math items never run anything."""
    return [g.correct for g in grade_detailed(items, sandbox, description=description, progress=progress)]


def grade_detailed(items: Sequence[Item], sandbox=None, *, description: str = "grading code answers",
                   progress: bool = False) -> list[Graded]:
    """`grade`'s verdicts, each math one with the Check that decided it."""
    from leaf.answers import check_answer
    from leaf.programs import grade_code, solution_code

    verdicts: list[Graded] = [Graded(None) for _ in items]
    code = [k for k, item in enumerate(items) if item.tests is not None]
    if code:
        if sandbox is None:
            from leaf.sandbox import SandboxConfig

            sandbox = SandboxConfig()
        tests = [items[k].tests for k in code]
        results = grade_code([solution_code(items[k].generation, t) for k, t in zip(code, tests)], tests, sandbox,
                             progress=progress, description=description)
        for k, result in zip(code, results):
            verdicts[k] = Graded(result.passed)
    for k, item in enumerate(items):
        if item.tests is None and item.answer:
            check = check_answer(item.generation, item.answer)
            verdicts[k] = Graded(check.correct, check)
    return verdicts
