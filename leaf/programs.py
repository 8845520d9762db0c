"""Code rows: a prompt, a reference solution, and tests that decide whether a program solves it.

A data row is a code row when it carries tests, under any of the names the code datasets use:

    tests        Python test code (a string), a list of assert lines, or a list of {"input", "output"} stdin cases
    test         HumanEval's `def check(candidate): ...` (with `entry_point`: `check(<entry_point>)` is called)
    test_list    MBPP's assert lines (with `test_setup_code` / `test_imports`)
    test_cases   AceCode-87K's assert lines

`tests_of(row)` reads them into a `CodeTests`; `program(code, tests)` assembles the program(s) to run;
`extract_code(generation)` takes the code out of a model's answer (the first fenced block that parses, else the
whole text); `grade_code` runs them in leaf's sandbox (leaf.sandbox) and `pass_at_k` is the unbiased estimator of
Chen et al. (2021). Rows without tests are math rows: leaf.answers checks them.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from leaf.errors import LeafError

TEST_FIELDS = ("tests", "test", "test_list", "test_cases")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class CodeTests:
    """How to test one problem's program."""

    code: str = ""                              # test code run after the solution (asserts, check(entry_point))
    setup: str = ""                             # run before the solution (imports, helpers)
    stdio: list[tuple[str, str]] = field(default_factory=list)  # (stdin, expected stdout) cases
    entry_point: str | None = None              # the function the tests call
    stub: str | None = None                     # HumanEval's prompt (signature + docstring): put before a body


# every field tests_of reads: what a record keeps of its row so that a later stage can grade it
TEST_KEYS = (*TEST_FIELDS, "entry_point", "test_setup_code", "test_imports", "setup", "prompt")


def has_tests(row: dict) -> bool:
    return any(row.get(name) not in (None, "", []) for name in TEST_FIELDS)


def test_fields(row: dict) -> dict | None:
    """The fields of a code row that tests_of reads (None for a row without tests): what leaf analyze keeps in a
    record so that serve grades it from the analyze folder."""
    if not has_tests(row):
        return None
    return {key: row[key] for key in TEST_KEYS if row.get(key) not in (None, "", [])}


def _lines(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise LeafError(f"{where} must be test code (a string) or a list of assert lines, got {type(value).__name__}.")


def tests_of(row: dict, where: str = "a row") -> CodeTests | None:
    """The tests of a data row (None for a row without tests); LeafError naming the row and field when they are
    malformed (not text, or test code that is not valid Python)."""
    entry = row.get("entry_point") or None
    setup = "\n".join(_lines(row[k], f"{where}: {k!r}") for k in ("test_setup_code", "test_imports", "setup")
                      if row.get(k))
    tests = None
    if row.get("tests") not in (None, "", []):
        value = row["tests"]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if not all(isinstance(v.get("input"), str) and isinstance(v.get("output"), str) for v in value):
                raise LeafError(f"{where}: 'tests' stdin cases need string 'input' and 'output' fields.")
            tests = CodeTests(setup=setup, stdio=[(v["input"], v["output"]) for v in value], entry_point=entry)
        else:
            tests = CodeTests(code=_lines(value, f"{where}: 'tests'"), setup=setup, entry_point=entry)
    elif row.get("test") not in (None, ""):  # HumanEval(+): check(candidate) called on the entry point
        if not entry:
            raise LeafError(f"{where} has HumanEval-style 'test' code but no 'entry_point' (the function check() "
                            "is called on). Add the field, or put complete test code under 'tests'.")
        code = _lines(row["test"], f"{where}: 'test'")
        if not re.search(r"^check\(", code, re.MULTILINE) and re.search(r"def check\(", code):
            code = f"{code}\n\ncheck({entry})\n"
        stub = row.get("prompt") if isinstance(row.get("prompt"), str) and "def " in row.get("prompt", "") else None
        tests = CodeTests(code=code, setup=setup, entry_point=entry, stub=stub)
    else:
        for name in ("test_list", "test_cases"):
            if row.get(name) not in (None, "", []):
                tests = CodeTests(code=_lines(row[name], f"{where}: {name!r}"), setup=setup, entry_point=entry)
                break
    if tests is None:
        return None
    for name, text in (("tests", tests.code), ("setup", tests.setup)):
        try:
            ast.parse(text)
        except SyntaxError as exc:
            raise LeafError(f"{where}: its {name} are not valid Python (line {exc.lineno}: {exc.msg}): "
                            f"{(exc.text or '').strip()[:80]!r}. Fix the row or drop it.") from None
    if not tests.code.strip() and not tests.stdio:
        raise LeafError(f"{where}: its tests are empty. A code row needs test code or stdin cases.")
    return tests


def parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def python_blocks(text: str) -> list[str] | None:
    """The Python code of a text, for a parse check: its fenced Python (or unlabelled) blocks; the whole text when it
    has no fence and parses; None when it holds no Python to check (prose)."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if blocks:
        return blocks
    return [text] if "```" not in text and parses(text) else None


def still_parses(original: str, pruned: str) -> bool | None:
    """Whether pruning left the code of a text valid: None when the original holds no code that parses (nothing to
    keep valid), else whether the pruned text has as many code blocks, each of which parses."""
    before = python_blocks(original)
    if not before or not all(parses(block) for block in before):
        return None
    after = [body for lang, body in _FENCE.findall(pruned) if lang.lower() in ("", "python", "py", "python3")] \
        if "```" in original else [pruned]
    return len(after) == len(before) and all(parses(block) for block in after)


def extract_code(generation: str) -> str:
    """The code in a model's answer: the first fenced block (```python or plain ```) that parses, else the first
    fenced block, else the whole text (a completion model's continuation)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(generation)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3")] or blocks
    for _, body in blocks:
        if parses(body):
            return body
    return blocks[0][1] if blocks else generation


def solution_code(generation: str, tests: CodeTests) -> str:
    """The program text of a generation: its code, after the problem's stub when the code continues the stub (a
    completion of HumanEval's prompt) instead of defining the entry point itself."""
    code = extract_code(generation)
    if tests.stub and tests.entry_point and not re.search(rf"def\s+{re.escape(tests.entry_point)}\s*\(", code):
        return tests.stub + code
    return code


def programs(code: str, tests: CodeTests) -> list[tuple[str, str, str | None]]:
    """(source, stdin, expected stdout or None) for each run that tests `code`."""
    head = f"{tests.setup}\n\n" if tests.setup else ""
    if tests.stdio:
        return [(head + code, stdin, expected) for stdin, expected in tests.stdio]
    return [(f"{head}{code}\n\n{tests.code}\n", "", None)]


def same_output(actual: str, expected: str) -> bool:
    """stdout against the expected output, line by line with surrounding whitespace ignored (LiveCodeBench's rule
    for stdin problems, without its numeric tolerance)."""
    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.strip().splitlines()]

    return lines(actual) == lines(expected)


@dataclass
class Verdict:
    passed: bool
    status: str             # passed, failed, timeout, wrong_output
    detail: str = ""        # the last line of stderr, or what the output was


def grade_code(codes: Sequence[str], tests: Sequence[CodeTests], sandbox, *, progress: bool = False,
               description: str = "running tests") -> list[Verdict]:
    """Run each program against its tests in the sandbox (leaf.sandbox.SandboxConfig: permission, isolation,
    limits, workers); one Verdict per program, passed only when every run passed."""
    from leaf.sandbox import run_programs

    runs, owner = [], []
    for k, (code, test) in enumerate(zip(codes, tests, strict=True)):
        for run in programs(code, test):
            runs.append(run)
            owner.append(k)
    sandbox.require(description, len(runs))
    results = run_programs([r[0] for r in runs], stdins=[r[1] for r in runs], limits=sandbox.limits,
                           isolation=sandbox.isolation, workers=sandbox.workers, progress=progress,
                           description=description)
    verdicts = [Verdict(True, "passed") for _ in codes]
    for (source, stdin, expected), k, result in zip(runs, owner, results):
        if not verdicts[k].passed:
            continue
        if result.status != "passed":
            tail = (result.stderr.strip().splitlines() or [""])[-1][:200]
            verdicts[k] = Verdict(False, result.status, tail or (result.signal or ""))
        elif expected is not None and not same_output(result.stdout, expected):
            verdicts[k] = Verdict(False, "wrong_output", result.stdout[:200])
    return verdicts


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c pass (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k), computed as a product for numerical stability."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
