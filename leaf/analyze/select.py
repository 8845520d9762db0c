"""--select and --verify of `leaf analyze`: greedy answers of the teacher and the student, checked against the
reference answer (leaf.answers), generated through leaf.serve's engines (vLLM or transformers).

--select keeps the samples the teacher answers correctly and the student does not (the paper's data pipeline);
--verify keeps an instruction-level counterfactual only when both models still answer it correctly.
"""

from __future__ import annotations

from leaf.records import AnalysedSample


class AnswerChecks:
    """Greedy answers of both models on prompts rendered each with its own template (`renderer.head`)."""

    def __init__(self, config, samples, renderer, teacher, student, code_tests: dict | None = None) -> None:
        self.config, self.samples, self.renderer = config, samples, renderer
        self.teacher, self.student = teacher, student
        self.engines: list = []  # (teacher, student), started on first use
        self.code_tests = code_tests or {}  # row -> its CodeTests (code rows only), parsed once by the run

    def reference_answer(self, row: int) -> str | None:
        """--answer-field's value, else the final answer extracted from the reference response."""
        from leaf.answers import extract_answer

        sample, field_name = self.samples[row], self.config.answer_field
        if field_name and sample.record.get(field_name) is not None:
            return str(sample.record[field_name])
        return extract_answer(sample.response)

    def answer_all(self, heads: dict[str, list[str]]) -> list[list[str]]:
        """Greedy continuations by the teacher and the student, each of its own rendered prompt heads
        ({"teacher": [...], "student": [...]}); returns [teacher's, student's]."""
        from leaf.serve.engines import engine_for_model, generate_texts

        config = self.config
        if not self.engines:
            self.engines = [engine_for_model(model, config.generator, batch_size=config.batch_size, seed=config.seed,
                                             allow_pickle=config.allow_pickle,
                                             trust_remote_code=config.trust_remote_code)
                            for model in (self.teacher, self.student)]
        return [generate_texts(engine, heads[who], max_new_tokens=config.max_new_tokens)
                for who, engine in zip(("teacher", "student"), self.engines)]

    def tests(self, row: int):
        """A code row's tests (they grade it, in the sandbox), else None."""
        return self.code_tests.get(row)

    def grade(self, rows: list[int], generations: list[str]) -> list[bool]:
        """Each generation against its row: tests in the sandbox for code rows, the reference answer otherwise. A
        generation continues the answer prefix (code: it opens the fence the answer closes), so it is graded with it."""
        return [bool(g.correct) for g in self.graded(rows, generations)]

    def graded(self, rows: list[int], generations: list[str]):
        """`grade` with the detail: each math verdict's leaf.answers.Check (the answer the checker read)."""
        from leaf.grading import Item, grade_detailed

        prefix = self.renderer.answer_prefix
        items = [Item(prefix + g, answer=self.reference_answer(r), tests=self.tests(r))
                 for r, g in zip(rows, generations)]
        return grade_detailed(items, self.config.sandbox(), description="leaf analyze: running code answers")

    def select(self, rows: list[int]) -> dict[int, dict]:
        """--select: greedy answers of both models; keep rows where the teacher is right and the student wrong.
        Each model's answer is the one the grader read (math-verify's extraction, or the regex checker's), with the
        checker that decided."""
        teacher, student = self.answer_all({who: [self.renderer.head(who, self.samples[r].prompt) for r in rows]
                                            for who in ("teacher", "student")})
        graded = {"teacher": self.graded(rows, teacher), "student": self.graded(rows, student)}
        out = {}
        for k, r in enumerate(rows):
            code = self.tests(r) is not None
            reference = "tests" if code else self.reference_answer(r)
            result = {"reference": reference}
            for name in ("teacher", "student"):
                check = graded[name][k].check
                result[f"{name}_answer"] = None if check is None else check.answer
                if check is not None:
                    result[f"{name}_checker"] = check.decided_by
                result[f"{name}_correct"] = bool(reference) and bool(graded[name][k].correct)
            result["kept"] = result["teacher_correct"] and not result["student_correct"]
            out[r] = result
        return out

    def verify(self, records: list[AnalysedSample]) -> int:
        """--verify: drop instruction-level counterfactuals that either model answers wrongly; returns how many.
        Response-level counterfactuals change the reference, not the question: they are not checked."""
        jobs = []  # (row, counterfactual)
        for record in records:
            for _, cf in record.counterfactuals(["instruction"]):
                if cf.prompt.strip():
                    jobs.append((record.row, cf))
                else:  # everything pruned: nothing left to answer
                    cf.verified = False
        gens = self.answer_all({who: [self.renderer.head(who, cf.prompt) for _, cf in jobs]
                                for who in ("teacher", "student")}) if jobs else []
        rows = [row for row, _ in jobs]
        verdicts = [self.grade(rows, g) for g in gens]
        for k, (row, cf) in enumerate(jobs):
            gradable = self.tests(row) is not None or bool(self.reference_answer(row))
            cf.verified = gradable and all(v[k] for v in verdicts)
        dropped = 0
        for record in records:
            for unit in record.units:
                kept = [cf for cf in unit.counterfactuals if cf.verified is not False]
                dropped += len(unit.counterfactuals) - len(kept)
                unit.counterfactuals = kept
        return dropped
