"""The demo task: arithmetic word problems with irrelevant context (GSM-IC / GSM-Plus "distraction insertion").

Seeded and deterministic. Each problem: a person starts with some objects and takes 1-3 steps (buys / finds / gives
away); the question asks how many objects that person has. Distractor sentences are inserted between the facts:
on-topic ones that mention the same objects or the same person with a number ("Eva has 6 cards .",
"Tom is 9 years old .") and off-topic ones ("The weather is sunny today ."). Every problem carries its clean twin (no
distractors), a short step-by-step reference solution that first restates the start, the answer, and the character
span of every distractor: removing the spans from the question gives the clean twin byte for byte.

Text is space-separated words, so the word-level tokenizer (`demo_tokenizer`) makes each word one token and
decoding round-trips exactly:

    question: "Tom has 4 cards . Eva has 6 cards . Tom buys 7 more cards . How many cards does Tom have now ?"
    solution: "Tom has 4 cards . 4 + 7 = 11 . #### 11"
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

NAMES = ("Tom", "Eva", "Sam", "Ann", "Max", "Mia")
OBJECTS = ("apples", "cards", "pens", "books", "coins", "eggs")
OFF_TOPIC = ("The weather is sunny today .", "The shop opens at nine .", "The bus is late again .",
             "It is a quiet day .", "The park is very green .")
MAX_NUMBER = 99


@dataclass
class Problem:
    id: str
    question: str
    clean_question: str
    solution: str
    answer: str
    distractor_spans: list[tuple[int, int]]  # character spans in `question`
    distractors: int
    steps: int

    def as_record(self) -> dict:
        """The JSONL row: GSM-Plus-like field names, so that every leaf command reads it as is."""
        record = asdict(self)
        record["seed_question"] = record.pop("clean_question")
        record["distractor_spans"] = [list(s) for s in self.distractor_spans]
        return record


def _steps(rng: random.Random, person: str, obj: str, start: int, count: int) -> tuple[list[str], list[str], int]:
    """Fact sentences and solution lines for `count` steps from `start`; returns them and the result."""
    facts, lines, value = [], [], start
    for _ in range(count):
        if value > 0 and rng.random() < 0.35:
            n = rng.randint(1, value)
            facts.append(f"{person} gives away {n} {obj} .")
            lines.append(f"{value} - {n} = {value - n} .")
            value -= n
        else:
            n = rng.randint(1, min(19, MAX_NUMBER - value))
            facts.append(f"{person} {rng.choice(('buys', 'finds'))} {n} more {obj} .")
            lines.append(f"{value} + {n} = {value + n} .")
            value += n
    return facts, lines, value


def _distractor(rng: random.Random, person: str, obj: str) -> str:
    other = rng.choice([n for n in NAMES if n != person])
    kind = rng.random()
    if kind < 0.35:
        return f"{other} has {rng.randint(1, 19)} {obj} ."                       # same objects, other person
    if kind < 0.55:
        return f"{other} buys {rng.randint(1, 19)} more {obj} ."                  # same verb and objects
    if kind < 0.75:
        return f"{person} is {rng.randint(5, 19)} years old ."                    # same person, a number
    if kind < 0.9:
        return f"{other} has {rng.randint(1, 19)} {rng.choice([o for o in OBJECTS if o != obj])} ."
    return rng.choice(OFF_TOPIC)                                                 # off topic


def make_problem(rng: random.Random, index: int, *, distractors: int, steps: int | None = None,
                 leak: float = 0.0, max_steps: int = 3) -> Problem:
    """leak: probability that a problem with distractors has its first one state the final answer ("Eva has 11
    cards ." when Tom ends with 11): a spurious correlation between a confounder and the answer (see generate)."""
    person, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    start = rng.randint(1, 19)
    steps = steps or rng.randint(1, max_steps)
    facts, lines, answer = _steps(rng, person, obj, start, steps)
    facts = [f"{person} has {start} {obj} ."] + facts
    extra = [_distractor(rng, person, obj) for _ in range(distractors)]
    if leak and extra and rng.random() < leak:
        other = rng.choice([n for n in NAMES if n != person])
        extra[0] = f"{other} has {answer} {obj} ."
    # each distractor goes after one of the facts (never before the first: the problem opens with its subject)
    slots = sorted(rng.randint(1, len(facts)) for _ in extra)
    sentences: list[tuple[str, bool]] = []
    for k, fact in enumerate(facts):
        sentences.append((fact, False))
        sentences += [(d, True) for d, slot in zip(extra, slots) if slot == k + 1]
    question_tail = f"How many {obj} does {person} have now ?"
    text, spans, clean = "", [], []
    for sentence, is_distractor in sentences:
        if is_distractor:
            spans.append((len(text), len(text) + len(sentence) + 1))  # the sentence and the space after it
        else:
            clean.append(sentence)
        text += sentence + " "
    question = text + question_tail
    solution = " ".join([f"{person} has {start} {obj} ."] + lines + [f"#### {answer}"])
    return Problem(str(index), question, " ".join(clean + [question_tail]), solution, str(answer), spans,
                   distractors, steps)


def generate(count: int, seed: int, *, distractors: tuple[int, ...] = (0, 1, 2), prefix: str = "",
             leak: float = 0.0, max_steps: int = 3) -> list[Problem]:
    """`count` problems, the number of distractors drawn uniformly from `distractors`. leak > 0 plants a spurious
    correlation: in that share of the problems with distractors, a distractor states the answer (training data
    only; test sets keep leak 0, so a student that learnt to copy it is caught). Problems take 1..max_steps steps."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        p = make_problem(rng, i, distractors=rng.choice(distractors), leak=leak, max_steps=max_steps)
        p.id = f"{prefix}{i}"
        problems.append(p)
    return problems


def vocabulary() -> list[str]:
    """Every word the generator can write, numbers 0..MAX_NUMBER included."""
    words = set(NAMES) | set(OBJECTS) | {"has", "buys", "finds", "more", "gives", "away", "is", "years", "old",
                                          "How", "many", "does", "have", "now", "?", ".", "+", "-", "=", "####"}
    for sentence in OFF_TOPIC:
        words.update(sentence.split())
    return sorted(words) + [str(n) for n in range(MAX_NUMBER + 1)]


def demo_tokenizer():
    """Word-level fast tokenizer over `vocabulary()` with the tiny models' special tokens and chat template."""
    from leaf.models.tiny import word_tokenizer

    return word_tokenizer(vocabulary())


def teacher_problems(max_steps: int = 3) -> list[Problem]:
    """The demo teacher's training problems: the shipped teacher was trained on these (`leaf demo --retrain-teacher`
    trains on them again)."""
    return generate(40000, 11, prefix="train-", max_steps=max_steps)


def texts(problems: list[Problem]) -> set[str]:
    """Every question a model could have seen of these problems: each one as posed and its clean twin."""
    return {q for p in problems for q in (p.question, p.clean_question)}


def held_out(count: int, seed: int, exclude: set[str], **generate_args) -> list[Problem]:
    """`count` problems as `generate` draws them, leaving out every problem whose question or clean twin is in
    `exclude` (the held-out sets' texts): training and design data never contain a test or validation problem, as
    posed or as its clean twin. Draws past `count` as needed (ids keep the generator's index)."""
    drawn = generate(2 * count + 100, seed, **generate_args)
    kept = [p for p in drawn if p.question not in exclude and p.clean_question not in exclude][:count]
    if len(kept) < count:
        raise ValueError(f"only {len(kept)} of {count} problems are disjoint from the held-out sets")
    return kept


# seeds of the generator per split (+ the demo seed): test and validation are held out from every other split
SPLIT_SEEDS = {"pool": 1000, "test": 2000, "student": 3000, "validation": 4000, "design": 6000}


def demo_splits(seed: int, *, pool: int, validation: int, test: int, leak: float = 0.0,
                max_steps: int = 3) -> dict[str, list[Problem]]:
    """The demo's problem sets for one seed, disjoint by construction: test (distractor problems: accuracy on them
    and on their clean twins), validation (distractor problems: the detection rule and the attention head are chosen
    there, never on test) and the training pool (0-2 distractors, `leak` as in `generate`), which holds no test or
    validation problem, as posed or as a clean twin. `student_problems` and `design_problems` leave out the same."""
    test_set = generate(test, SPLIT_SEEDS["test"] + seed, distractors=(1, 2), prefix="test-", max_steps=max_steps)
    validation_set = held_out(validation, SPLIT_SEEDS["validation"] + seed, texts(test_set), distractors=(1, 2),
                              prefix="val-", max_steps=max_steps)
    exclude = texts(test_set) | texts(validation_set)
    return {"test": test_set, "validation": validation_set,
            "pool": held_out(pool, SPLIT_SEEDS["pool"] + seed, exclude, prefix="pool-", leak=leak,
                             max_steps=max_steps)}


def student_problems(count: int, seed: int, exclude: set[str], *, clean: bool = True) -> list[Problem]:
    """The student's pre-training problems (trained on their clean twins when `clean`), none of them a held-out
    problem or its twin."""
    return held_out(count, SPLIT_SEEDS["student"] + seed, exclude, prefix="clean-" if clean else "mixed-")


def design_problems(count: int, seed: int, exclude: set[str], **generate_args) -> list[Problem]:
    """Distractor problems for design searches (docs/experiments): their own split, never a test problem."""
    return held_out(count, SPLIT_SEEDS["design"] + seed, exclude, distractors=(1, 2), prefix="design-",
                    **generate_args)
