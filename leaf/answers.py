"""Final-answer extraction and comparison for math data: `#### 42`, `\\boxed{42}`, or the last number.

    extract_answer("... so 3 + 2 = 5.\\n#### 5")  -> "5"
    answers_match("$1,200.00", "1200")          -> True
"""

from __future__ import annotations

import re
from fractions import Fraction

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


def is_correct(generation: str, reference_answer: str) -> bool:
    """Whether a generated solution's final answer equals the reference answer after normalisation."""
    return answers_match(extract_answer(generation), reference_answer)
