"""`leaf analyze`'s settings: every option, its help text and its checks (no model is needed to check them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc
from leaf.run_folder import code_version, file_digest
from leaf.sandbox import SandboxOptions
from leaf.analyze.teacher_scores import TeacherScores
from leaf.analyze.thresholds import THRESHOLDS, baseline_modes, get_threshold, gradient_modes, options_given

THRESHOLD_MODES = tuple(THRESHOLDS)
LEVELS = ("instruction", "response", "both")
PRUNING = ("span", "collective")
SPAN_UNITS = ("token", "word", "clause", "sentence")  # leaf.spans.SPAN_UNITS, without torch
AGGREGATES = ("token", "clause", "sentence")
TEMPLATES = ("own", "student", "teacher", "none")  # leaf.rendering.TEMPLATES, without torch
DOMAINS = ("auto", "math", "code")
UNPARSABLE = ("drop", "keep")
# per domain: --quantile's default (the released scripts: 0.05 math, 0.10 code) and the answer prefix's default
QUANTILE = {"math": 0.05, "code": 0.10}
ANSWER_PREFIX = {"math": None, "code": "code_answer_prefix.txt"}   # files in leaf/templates/


@dataclass
class AnalyzeConfig(SandboxOptions):
    teacher: str | None = field(default=None, metadata=doc("Teacher model: local HF folder or hub id."))
    student: str | None = field(default=None, metadata=doc("Student model: local HF folder or hub id."))
    data: Path | None = field(default=None, metadata=doc(
        "Dataset: JSONL/JSON/CSV/Parquet file or saved HF dataset folder."))
    output: Path | None = field(default=None, metadata=doc(
        "Output folder (samples.jsonl, scores.safetensors, summary.json, report.html)."))
    threshold: str = field(default="iqr", metadata=doc(
        "Threshold mode: iqr (flag Δ < Q1 − 1.5·IQR: the seed's rule), absolute (Δ <= --tau: the paper's), quantile "
        "(exactly the lowest ceil(p·N) candidates), released (the released scripts' rule: Δ <= min(sorted(Δ)[int(p·N)], "
        "0.5), over leaf's candidates), random / ppl (baselines: as many flags as --baseline-count, at random / where "
        "the student is most surprised). docs/analyze.md \"Threshold modes\" says how they differ from the released "
        "detection."))
    tau: float | None = field(default=None, metadata=doc("τ for --threshold absolute (paper: 0.10 instr, 0.15 resp)."))
    quantile: float | None = field(default=None, metadata=doc(
        "Fraction flagged by --threshold quantile / released (default by --domain: 0.05 math, 0.10 code)."))
    baseline_count: str = field(default="iqr", metadata=doc(
        f"Gradient mode whose flag count the {' and '.join(baseline_modes())} baselines copy: "
        f"{', '.join(gradient_modes())}."))
    domain: str = field(default="auto", metadata=doc(
        "math or code settings; auto: code when the rows carry tests. Code (the reference's code run): --quantile "
        "0.10, the answer prefix of leaf/templates/code_answer_prefix.txt, response segments cut at statement ends, "
        "spans that never cross a line, and a parse check of every counterfactual (--unparsable)."))
    answer_prefix: str | None = field(default=None, metadata=doc(
        "A text file whose text starts the assistant turn, before the response (the models answer after it), or "
        "'none'. Default by --domain: code, leaf/templates/code_answer_prefix.txt; math, none."))
    unparsable: str = field(default="drop", metadata=doc(
        "Code: a counterfactual whose code no longer parses (its original's did) is counted and dropped, or kept "
        "(marked parses: false): drop, keep."))
    level: str = field(default="instruction", metadata=doc("Where to look: instruction, response, both."))
    segments: int = field(default=2, metadata=doc("Response segments at response level: 2 or 3."))
    pruning: str = field(default="span", metadata=doc("span: one counterfactual per span; collective: all at once."))
    span_unit: str = field(default="word", metadata=doc(
        "Grow flagged spans to whole words (so that pruning never cuts a word apart), to the clause or sentence "
        "around them, or keep model tokens: token, word, clause, sentence."))
    aggregate: str = field(default="token", metadata=doc(
        "Decide per token (the paper's rule), or per clause / sentence on the mean Δ of its tokens (every threshold "
        "mode then flags whole clauses / sentences): token, clause, sentence."))
    gold: str | None = field(default=None, metadata=doc(
        "Field holding the ground truth: the distractor text, a list of texts, or a list of [start, end] spans."))
    gold_pair: str | None = field(default=None, metadata=doc(
        "FIELD_A,FIELD_B: the distractor is what FIELD_A (question) adds to FIELD_B (its clean twin)."))
    template: str = field(default="own", metadata=doc(
        "How the models see a sample: own (each its own chat template, BOS included; scores aligned through the "
        "prompt and response text), student or teacher (that model's template for both), none (plain text)."))
    select: bool = field(default=False, metadata=doc(
        "Keep only samples the teacher answers correctly and the student does not (greedy generation)."))
    verify: bool = field(default=False, metadata=doc(
        "Keep a counterfactual only if both models answer it correctly (greedy generation)."))
    answer_field: str | None = field(default=None, metadata=doc(
        "Field with the reference answer (default: extracted from the response: ####, \\boxed{}, last number)."))
    max_new_tokens: int = field(default=256, metadata=doc("Generation budget for --select/--verify."))
    generator: str = field(default="auto", metadata=doc(
        "Greedy generation for --select/--verify: vllm, hf (transformers generate), or auto (vllm when installed)."))
    prompt_field: str | None = field(default=None, metadata=doc("Prompt field (default: instruction, question, prompt)."))
    response_field: str | None = field(default=None, metadata=doc(
        "Response field (default: output, solution, response)."))
    id_field: str = field(default="id", metadata=doc("Sample id field (default: the row number)."))
    limit: int | None = field(default=None, metadata=doc("Analyse only the first N samples."))
    strict: bool = field(default=False, metadata=doc(
        "Stop at the first row that cannot be a sample (a missing field, an empty, blank or null prompt or "
        "response) instead of skipping it (skipped rows are counted and listed in summary.json's bad_rows)."))
    batch_size: int = field(default=8, metadata=doc("Samples per forward/backward pass."))
    window: int = field(default=64, metadata=doc("Samples per part file: the unit of --resume, sorted by length."))
    seed: int = field(default=0, metadata=doc("Seed of the random baseline."))
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda, cuda:1, ..."))
    dtype: str = field(default="float32", metadata=doc(
        "Model dtype: float32, bfloat16, float16 or auto (the checkpoint's)."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights: only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoint (only if trusted)."))
    resume: bool = field(default=False, metadata=doc("Continue an interrupted run in --output."))
    teacher_only: bool = field(default=False, metadata=doc(
        "Score only the teacher and store the scores in --output, for --teacher-scores runs with any student "
        "(--student then only lends its chat template, with --template student)."))
    teacher_scores: Path | None = field(default=None, metadata=doc(
        "Reuse the teacher scores of a --teacher-only run instead of running the teacher (--teacher is then "
        "needed only for --select/--verify)."))
    device_map: str | None = field(default=None, metadata=doc(
        "Spread the teacher over all visible GPUs (transformers device_map, e.g. auto) for a teacher too big for one."))
    gradient_checkpointing: bool = field(default=False, metadata=doc(
        "Recompute activations in the backward pass: activation memory of one layer instead of all layers."))
    report_samples: int = field(default=100, metadata=doc("Samples shown in report.html."))

    def __post_init__(self) -> None:
        get_threshold(self.threshold)
        for name in ("data", "output"):
            if getattr(self, name) is None:
                raise LeafError(f"--{name} is required.")
        self.data, self.output = Path(self.data), Path(self.output)
        check_output_folder(self.output, allow_nonempty=True)  # a file there: say so before loading models
        if self.teacher_scores is not None:
            self.teacher_scores = Path(self.teacher_scores)
        needs_student = not self.teacher_only or self.template == "student"  # own: the teacher's own template
        checks = [
            (self.teacher is not None or self.teacher_scores is not None,
             "--teacher is required (or --teacher-scores DIR from a --teacher-only run)."),
            (self.student is not None or not needs_student,
             "--student is required." if not self.teacher_only else
             "--teacher-only with --template student needs --student for its chat template (its weights are not "
             "loaded), or use --template own, teacher or none."),
            (not (self.teacher_only and self.teacher_scores), "Give --teacher-only or --teacher-scores, not both."),
            (not (self.teacher_only and (self.select or self.verify)),
             "--select/--verify compare the teacher's and the student's answers: not with --teacher-only."),
            (not (self.teacher_scores and (self.select or self.verify) and self.teacher is None),
             "--select/--verify generate with the teacher: with --teacher-scores also give --teacher."),
            (self.level in LEVELS, f"--level must be one of {', '.join(LEVELS)}, got {self.level!r}."),
            (self.pruning in PRUNING, f"--pruning must be one of {', '.join(PRUNING)}, got {self.pruning!r}."),
            (self.span_unit in SPAN_UNITS,
             f"--span-unit must be one of {', '.join(SPAN_UNITS)}, got {self.span_unit!r}."),
            (self.aggregate in AGGREGATES,
             f"--aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}."),
            (self.template in TEMPLATES, f"--template must be one of {', '.join(TEMPLATES)}, got {self.template!r}."),
            (self.segments in (2, 3), f"--segments must be 2 or 3, got {self.segments}."),
            (self.quantile is None or 0 < self.quantile < 1, f"--quantile must be in (0, 1), got {self.quantile}."),
            (self.domain in DOMAINS, f"--domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}."),
            (self.unparsable in UNPARSABLE,
             f"--unparsable must be one of {', '.join(UNPARSABLE)}, got {self.unparsable!r}."),
            (self.tau is None or 0 <= self.tau <= 1, f"--tau must be in [0, 1] (Δ is normalised), got {self.tau}."),
            options_given("--threshold", self.threshold, self),
            (self.baseline_count in gradient_modes(),
             f"--baseline-count must be one of {', '.join(gradient_modes())}."),
            options_given("--baseline-count", self.baseline_count, self),
            (not (self.gold and self.gold_pair), "Give --gold or --gold-pair, not both."),
            (self.gold_pair is None or len(self.gold_pair.split(",")) == 2,
             f"--gold-pair takes two field names separated by a comma, got {self.gold_pair!r}."),
            (self.batch_size >= 1 and self.window >= 1, "--batch-size and --window must be at least 1."),
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}."),
            (self.max_new_tokens >= 1, f"--max-tokens must be at least 1, got {self.max_new_tokens}."),
            (self.report_samples >= 0, f"--report-samples must be 0 or more, got {self.report_samples}."),
        ]
        self.sandbox()  # its options' checks
        if self.domain != "auto":
            self.settle_domain(self.domain)
        if self.select or self.verify:
            from leaf.serve.backends import resolve_backend

            resolve_backend(self.generator)
        for ok, message in checks:
            if not ok:
                raise LeafError(message)

    def settle(self, samples) -> None:
        """--domain auto decided by the data: code when its rows carry tests, math when none does; a mix is refused
        (the settings are per run). Then the domain's defaults: --quantile and the answer prefix."""
        if self.domain == "auto":
            from leaf.programs import has_tests

            code = sum(has_tests(s.record) for s in samples)
            if 0 < code < len(samples):
                raise LeafError(f"{self.data} mixes {code} code rows (with tests) and {len(samples) - code} rows "
                                "without tests. Code and math take different settings: analyse them apart, or give "
                                "--domain code or --domain math to use one setting for all.")
            self.domain = "code" if samples and code == len(samples) else "math"
        self.settle_domain(self.domain)

    def settle_domain(self, domain: str) -> None:
        if self.quantile is None:
            self.quantile = QUANTILE[domain]
        if self.answer_prefix is None:
            self.answer_prefix = ANSWER_PREFIX[domain] or "none"
        self.answer_prefix_text()  # a missing or unreadable file: said before any model loads

    def answer_prefix_text(self) -> str:
        """The answer prefix's text ('' for none): a file's text; a bare name is a file of leaf/templates/."""
        name = self.answer_prefix
        if name in (None, "none", ""):
            return ""
        path = Path(name)
        if not path.exists() and len(path.parts) == 1:
            path = Path(__file__).resolve().parents[1] / "templates" / name
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LeafError(f"--answer-prefix {name!r}: cannot read it ({exc}). Give a UTF-8 text file, a file "
                            "name from leaf/templates/, or 'none'.") from None

    @property
    def gold_fields(self) -> tuple[str, str] | None:
        """--gold-pair as (question field, clean twin field)."""
        if not self.gold_pair:
            return None
        a, b = (name.strip() for name in self.gold_pair.split(","))
        return a, b

    def fingerprint(self) -> dict:
        """What must match for --resume to continue a run: everything that changes the results."""
        # what changes memory or speed but not the results may change on --resume (e.g. after running out of memory)
        skip = {"output", "resume", "report_samples", "device_map", "gradient_checkpointing", "sandbox_workers",
                "allow_code_execution"}
        values = {k: v for k, v in self.as_json().items() if k not in skip}
        values["answer_prefix"] = self.answer_prefix_text()  # the text, not the file name
        extra = {"teacher_scores_sha256": TeacherScores(self.teacher_scores).digest()} if self.teacher_scores else {}
        return {**values, "data_sha256": file_digest(self.data), **extra, "code": code_version()}

    def as_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
