"""Answer checking: the regex checker and math-verify side by side on hard cases, and math-verify's fallbacks.

Each row of HARD_CASES is (reference, generation, regex verdict, math-verify verdict), the verdicts being what the
two checkers of leaf.answers.is_correct return today; a comment says which is right where they differ.
"""

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import math_verify
import pytest
from math_verify.errors import TimeoutException

from leaf.answers import default_checker, is_correct, list_checkers, math_verify_match
from leaf.errors import LeafError
from tests.shared import GSM_PLUS

HARD_CASES = [
    # fractions
    ("\\frac{1}{2}", "The answer is 0.5.", True, True),
    ("0.5", "The probability is $\\frac{1}{2}$.", False, True),  # math-verify right: the regex takes the last number, 2
    ("\\frac{1}{2}", "The probability is 1/2.", True, True),
    ("\\dfrac{3}{4}", "\\boxed{0.75}", True, True),
    ("\\frac{3}{4}", "so the share is \\boxed{\\dfrac{3}{4}}", True, True),
    # intervals
    ("(0, 1]", "The solution set is $(0, 1]$.", False, True),  # math-verify right: the regex reads only a last number
    ("(0,1]", "So $x \\in \\boxed{(0, 1]}$.", False, True),  # math-verify right: the regex compares "(0 1]" to "(01]"
    ("(0, 1]", "The solution set is $[0, 1]$.", False, False),
    # sets
    ("\\{1, 2\\}", "The roots are $\\{2, 1\\}$.", False, True),  # math-verify right: sets are unordered
    ("\\{1, 2\\}", "\\boxed{2, 1}", False, True),  # math-verify right: a boxed list compares as a set
    ("\\{1, 2\\}", "The set is {2, 1}.", False, False),  # both wrong: braces outside LaTeX are not a set to either
    # percentages: math-verify accepts both readings of a reference percentage (50\% matches 0.5 and 50)
    ("50\\%", "The answer is $0.5$.", False, True),  # math-verify right: 50% is 0.5
    ("50\\%", "\\boxed{50}", True, True),
    ("0.5", "The answer is $50\\%$.", False, True),  # math-verify right: 50% is 0.5
    ("0.5", "The answer is 50%.", False, True),  # math-verify right
    ("50", "The answer is 50%.", True, True),
    # units
    ("5 \\text{ cm}", "\\boxed{5}", True, True),
    ("5", "\\boxed{5 \\text{ cm}}", True, True),
    ("5", "\\boxed{5\\,\\mathrm{cm}}", False, True),  # math-verify right: the regex keeps "\\," and fails
    ("5", "Each piece is 5 cm long.", True, True),
    ("5", "\\boxed{5x}", True, False),  # math-verify right: the regex drops trailing letters as if they were a unit
    # LaTeX vs plain
    ("\\sqrt{2}", "The answer is $\\sqrt{2}$.", False, True),  # math-verify right: the regex takes the last number, 2
    ("\\sqrt{2}", "The answer is sqrt(2).", False, False),  # both wrong: math-verify cannot parse sqrt(2) (fallback)
    ("2\\sqrt{2}", "The length is $\\sqrt{8}$.", False, True),  # math-verify right: equal after simplification
    ("\\frac{\\pi}{4}", "\\boxed{\\pi/4}", True, True),
    ("x^2+2x+1", "It factors as $(x+1)^2$.", False, True),  # math-verify right: symbolic equality
    # \boxed{} in a full solution: the box wins over numbers written after it
    ("\\frac{3}{4}", "Each of the 4 friends gets 3 slices, so the share is \\boxed{\\frac{3}{4}} of a pie, 75 percent.",
     True, True),
    ("10", "We need 2 + 8 = \\boxed{10} apples; check: 10 - 8 = 2.", True, True),
    # negative numbers
    ("-3", "The answer is $-3$.", True, True),
    ("-3", "x = -3", True, True),
    ("-3", "\\boxed{3}", False, False),
    # thousands separators
    ("1234", "The total is $1,234.00.", True, True),
    ("1234", "\\boxed{1{,}234}", False, True),  # math-verify right: LaTeX's {,} separator
    ("1234", "\\boxed{1\\,234}", False, False),  # both wrong: math-verify reads a thin-space separator as 1 + 234
    ("1,000,000", "\\boxed{1000000}", True, True),
    # GSM8K: `####` generations go to the regex checker under both names
    ("18", "She sells 16 - 3 - 4 = 9 eggs at $2 each: 9 * 2 = $18.\n#### 18", True, True),
    ("1234", "#### 1,234", True, True),
    ("1234", "#### $1,234.00", True, True),
    ("18", "#### 18\nThat is 3 eggs fewer than yesterday.", True, True),  # math-verify alone would read the 3
    ("18 dollars", "He earns \\boxed{18}.", True, True),  # the reference is a plain number to both (regex-normalised)
    # words
    ("twelve", "\\boxed{\\text{twelve}}", True, True),
]


@pytest.mark.parametrize("reference,generation,regex,mv", HARD_CASES)
def test_hard_cases_with_both_checkers(reference, generation, regex, mv):
    assert is_correct(generation, reference, checker="regex") is regex
    assert is_correct(generation, reference, checker="math-verify") is mv


def test_math_verify_is_the_default_and_unknown_checkers_are_named():
    assert default_checker() == "math-verify" and list_checkers() == ["math-verify", "regex"]
    assert is_correct("The probability is $\\frac{1}{2}$.", "0.5")
    with pytest.raises(LeafError, match="Available: math-verify, regex"):
        is_correct("5", "5", checker="sympy")


def test_regex_fallback_when_math_verify_cannot_parse():
    # "12." is extracted but does not parse: math-verify cannot decide, the regex checker reads 12
    assert math_verify_match("\\boxed{12.}", "12") is None
    assert is_correct("\\boxed{12.}", "12", checker="math-verify")
    assert math_verify_match("The answer is sqrt(2).", "\\sqrt{2}") is None  # nothing parsed at all
    assert math_verify_match("", "5") is None and not is_correct("", "5")


@pytest.mark.parametrize("error", [TimeoutException("Operation timed out!"), RuntimeError("sympy failed")])
def test_regex_fallback_when_math_verify_raises_or_times_out(monkeypatch, error):
    def failing_verify(*args, **kwargs):
        raise error

    monkeypatch.setattr(math_verify, "verify", failing_verify)
    assert math_verify_match("The probability is $\\frac{1}{2}$.", "0.5") is None
    # the regex verdict (it reads the last number, 2), not math-verify's
    assert not is_correct("The probability is $\\frac{1}{2}$.", "0.5")
    assert is_correct("The answer is 0.5.", "\\frac{1}{2}")


def test_without_math_verify_the_regex_checker_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import fails, find_spec returns None
    assert default_checker() == "regex"
    assert math_verify_match("$\\sqrt{2}$", "\\sqrt{2}") is None
    assert not is_correct("The probability is $\\frac{1}{2}$.", "0.5", checker="math-verify")


def test_math_verify_off_the_main_thread_gives_the_same_verdicts():
    """math-verify's signal.alarm timeout raises ValueError off the main thread; is_correct runs it without one."""
    cases = [(generation, reference) for reference, generation, _, _ in HARD_CASES]
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda case: (threading.current_thread() is threading.main_thread(),
                                               is_correct(*case)), cases))
    assert not any(main for main, _ in verdicts)
    assert [v for _, v in verdicts] == [mv for _, _, _, mv in HARD_CASES]


def test_gsm_plus_solutions_grade_alike_with_both_checkers():
    """The 200 GSM-Plus reference solutions against their answers: all correct to both checkers, and to math-verify
    also without `####` routing; none correct against the answer plus one."""
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]
    for row in rows:
        solution, answer = row["solution"], row["answer"]
        assert is_correct(solution, answer, checker="regex") and is_correct(solution, answer)
        assert math_verify_match(solution, answer), solution[-80:]
        assert not math_verify_match(solution, str(int(answer.replace(",", "")) + 1)), solution[-80:]


@pytest.mark.parametrize("generation,reference,want", [
    ("The probability is $\\frac{1}{2}$.", "0.5", (True, "math-verify", None)),
    ("Tom has 4 . 4 + 7 = 11 . #### 11", "11", (True, "regex", "gsm8k-style")),
    ("no math here at all", "5", (False, "regex", "undecided")),
    ("", "5", (False, "regex", "gsm8k-style")),
])
def test_check_answer_says_which_checker_decided_and_why(generation, reference, want):
    from leaf.answers import check_answer

    check = check_answer(generation, reference)
    assert (check.correct, check.checker, check.fallback) == want
    assert check.correct == is_correct(generation, reference)
    assert check_answer(generation, reference, "regex").fallback is None


def test_the_answer_recorded_is_the_one_the_grader_read():
    """math-verify reads the fraction the regex checker cannot (it would take the last number, "2")."""
    from leaf.answers import check_answer, extract_answer

    check = check_answer("The probability is $\\frac{1}{2}$.", "0.5")
    assert check.checker == "math-verify" and check.answer == "\\frac{1}{2}" and check.correct
    assert extract_answer("The probability is $\\frac{1}{2}$.") == "2"


def test_checker_counts_separate_fallbacks_by_reason():
    from leaf.answers import check_answer, checker_counts

    checks = [check_answer(g, "5") for g in ("x = 5", "#### 5", "#### 4", "nothing", "$5$")] + [None]
    checks.append(check_answer("5", "5", "regex"))
    assert checker_counts(checks) == {"math-verify": 2, "regex": 1, "fallback gsm8k-style": 2,
                                      "fallback undecided": 1}
