"""Final-answer checking for math data: math-verify (HuggingFace's parser and equivalence checker) by default, and
the regex checker (`#### 42`, `\\boxed{42}`, or the last number, with numeric normalisation) as its fallback.

    extract_answer("... so 3 + 2 = 5.\\n#### 5")      -> "5"
    answers_match("$1,200.00", "1200")               -> True  (regex normalisation)
    is_correct("so $x \\in (0, 1]$", "(0, 1]")        -> True  (math-verify; the regex checker says False)

is_correct(generation, reference, checker=...) is what the demo calls; check_answer gives the same verdict with the
answer the deciding checker read, which checker decided, and why the regex checker did when math-verify was asked
(`fallback`): what analyze --select/--verify record and serve counts (leaf.grading).
Checkers: "math-verify" (the default when the package is importable) and "regex". math-verify decides unless it
cannot parse one side (no math in it), raises or times out (fallback "undecided"), or the generation is GSM8K-style
(`####`, fallback "gsm8k-style"): then the regex checker does. tests/test_answers_math_verify.py tables where the two
differ.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from leaf.errors import LeafError

CHECKERS = ("math-verify", "regex")
MATH_VERIFY_TIMEOUT_S = 5  # per parse and per comparison (math-verify's default); signal.alarm counts whole seconds
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\$?\.\d+")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a solution: after the last `####`, else in the last \\boxed{}, else the last number."""
    if text is None:
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        line = tail.splitlines()[0].strip() if tail else ""
        return line or None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> str | None:
    """A canonical form: numbers without `$`, commas, trailing `.`/zeros; fractions and \\frac reduced."""
    if answer is None:
        return None
    text = answer.strip().rstrip(".").strip()
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\[dt]?frac\{([^}]*)\}\{([^}]*)\}", r"\1/\2", text)
    text = text.replace("$", "").replace(",", "").replace("\\%", "").replace("%", "").strip()
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?|-?\.\d+)(?:/(-?\d+(?:\.\d+)?))?(?:\s*[A-Za-z ]*)?", text)
    if match:
        try:
            value = Fraction(match.group(1))
            if match.group(2):
                value /= Fraction(match.group(2))
            return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
        except (ValueError, ZeroDivisionError):
            pass
    return text.lower()


def answers_match(predicted: str | None, reference: str | None) -> bool:
    a, b = normalize_answer(predicted), normalize_answer(reference)
    return a is not None and a == b


def list_checkers() -> list[str]:
    return list(CHECKERS)


def default_checker() -> str:
    """The checker is_correct uses when none is named: math-verify when importable, else the regex checker."""
    return "math-verify" if importlib.util.find_spec("math_verify") is not None else "regex"


def _gold_text(reference: str) -> str:
    """The reference as math-verify should read it: boxed (bare LaTeX outside `$`/`\\boxed{}` is not extracted, and
    `(0, 1]` would parse as its last number); a plain number with `$`, commas or words (`$1,234.00`, `18 dollars`)
    first normalised by the regex checker, which reads those as GSM8K means them (percentages keep their `%`)."""
    if "\\boxed" in reference:
        return reference
    if "\\" not in reference and "%" not in reference:
        number = normalize_answer(reference)
        if number is not None and re.fullmatch(r"-?\d+(?:/\d+)?", number):
            reference = number
    return f"\\boxed{{{reference}}}"


def math_verify_match(generation: str, reference_answer: str) -> bool | None:
    """math-verify's verdict on a generation against the reference (gold first, as verify() expects), or None when
    it cannot decide: math-verify missing, no parsable math on one side, an error or a timeout."""
    decided = _math_verify(generation, reference_answer)
    return None if decided is None else decided[0]


def _math_verify(generation: str, reference_answer: str) -> tuple[bool, str | None] | None:
    """math-verify's verdict and the answer it extracted from the generation, or None when it cannot decide.

    math-verify times out with signal.alarm, which works in the main thread only: in other threads (a server's
    worker, a thread pool) it runs without a timeout rather than raise."""
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except ImportError:
        return None
    seconds = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(_gold_text(reference_answer), parsing_timeout=seconds, raise_on_error=True)
        predicted = parse(generation, parsing_timeout=seconds, raise_on_error=True)
        # each is [sympy object, extracted text], [text] when only the extraction worked, or []
        if all(isinstance(x, str) for x in gold) or all(isinstance(x, str) for x in predicted):
            return None
        answer = next((x for x in predicted if isinstance(x, str)), None)
        return bool(verify(gold, predicted, timeout_seconds=seconds, raise_on_error=True)), answer
    except (Exception, TimeoutException):
        return None


@dataclass(frozen=True)
class Check:
    """One answer check: the verdict, the answer the deciding checker read from the generation, the checker that
    decided, and why the regex checker decided when math-verify was asked ("gsm8k-style": a `####` answer line;
    "undecided": math-verify could not parse one side, raised or timed out), else None."""

    correct: bool
    answer: str | None
    checker: str
    fallback: str | None = None

    @property
    def decided_by(self) -> str:
        """The checker that decided, with the fallback's reason: "math-verify", "regex (gsm8k-style)", ..."""
        return self.checker + (f" ({self.fallback})" if self.fallback else "")


def check_answer(generation: str, reference_answer: str, checker: str | None = None) -> Check:
    """Whether a generated solution's final answer equals the reference answer, and how that was decided.

    checker: "math-verify" (default when importable) or "regex"; math-verify falls back to the regex checker when it
    cannot decide (see math_verify_match) and for GSM8K-style generations (`####`), whose line after `####` the
    regex checker reads exactly (math-verify would take the last number of any text that follows)."""
    checker = checker or default_checker()
    if checker not in CHECKERS:
        raise LeafError(f"Unknown answer checker {checker!r}. Available: {', '.join(CHECKERS)}.")
    fallback = None
    if checker == "math-verify":
        if generation and "####" not in generation:
            decided = _math_verify(generation, reference_answer)
            if decided is not None:
                return Check(decided[0], decided[1], "math-verify")
            fallback = "undecided"
        else:
            fallback = "gsm8k-style"
    answer = extract_answer(generation)
    return Check(answers_match(answer, reference_answer), answer, "regex", fallback)


def is_correct(generation: str, reference_answer: str, checker: str | None = None) -> bool:
    """Whether a generated solution's final answer equals the reference answer (check_answer's verdict)."""
    return check_answer(generation, reference_answer, checker).correct


def checker_counts(checks: list[Check | None]) -> dict[str, int]:
    """How the math answers were decided: by math-verify, by the regex checker as asked, and by the regex checker in
    math-verify's place (per reason): serve's summary reports it, so that a run graded mostly by the fallback shows."""
    counts = {"math-verify": 0, "regex": 0, "fallback gsm8k-style": 0, "fallback undecided": 0}
    for check in checks:
        if check is not None:
            counts[f"fallback {check.fallback}" if check.fallback else check.checker] += 1
    return counts
