"""`leaf serve`: load each model into vLLM (or HF generate), benchmark it on prompt sets, score its greedy answers,
and measure its attention focus; one results folder.

    leaf serve --model runs/student --model runs/distill/final --data runs/analyze --output runs/serve

Per model and prompt set (original, clean twin, pruned by `leaf analyze`, or random): throughput and latency
(vLLM's key names), greedy accuracy where the data has reference answers; per model the attention focus on the
confounder spans. Ratios against the first model (e.g. the student before distillation), and pruned vs original.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc
from leaf.sandbox import SandboxOptions
from leaf.serve.backends import BACKENDS


@dataclass
class ServeConfig(SandboxOptions):
    models: list[str] = field(metadata=doc("Model folders (or hub ids); the first is the baseline of every ratio."))
    output: Path = field(metadata=doc("Results folder: results.json, results.md, results.png, generations.jsonl."))
    data: Path | None = field(default=None, metadata=doc(
        "Prompts: a dataset (any format leaf analyze reads) or a leaf analyze output folder (adds pruned prompts)."))
    names: list[str] = field(default_factory=list, metadata=doc("Display names of the models (default: folder names)."))
    backend: str = field(default="auto", metadata=doc("vllm, hf (transformers generate) or auto (vllm if installed)."))
    max_tokens: int = field(default=256, metadata=doc("Greedy generation budget per request."))
    limit: int | None = field(default=None, metadata=doc("Use only the first N problems."))
    iterations: int = field(default=3, metadata=doc("Timed repetitions of each prompt set (after warmup)."))
    warmup: int = field(default=1, metadata=doc("Untimed repetitions first (on up to 8 prompts)."))
    random_prompts: int = field(default=0, metadata=doc("Also benchmark N random prompts (vLLM-style)."))
    random_input_len: int = field(default=128, metadata=doc("Tokens per random prompt."))
    random_output_len: int = field(default=128, metadata=doc("Tokens generated per random prompt (EOS ignored)."))
    focus_samples: int = field(default=64, metadata=doc("Problems with confounder spans used for attention focus."))
    prompt_field: str | None = field(default=None, metadata=doc("Prompt field of a dataset."))
    response_field: str | None = field(default=None, metadata=doc("Reference response field of a dataset."))
    clean_field: str | None = field(default=None, metadata=doc(
        "Field with the clean twin of each problem (default: seed_question when present)."))
    answer_field: str | None = field(default=None, metadata=doc(
        "Reference answer field (default: answer, else the reference solution's final answer)."))
    id_field: str = field(default="id", metadata=doc("Sample id field."))
    gold_field: str | None = field(default=None, metadata=doc(
        "Field with the confounders: text(s) or [start, end] spans (default: distractor_spans when present, else "
        "the words the question adds to its clean twin)."))
    chat_template: bool = field(default=True, metadata=doc("Render prompts with each model's chat template."))
    device: str = field(default="cpu", metadata=doc("cpu or cuda."))
    dtype: str = field(default="float32", metadata=doc("Model dtype (bfloat16 on GPUs)."))
    batch_size: int = field(default=8, metadata=doc("HF backend: prompts per static batch; focus: samples per pass."))
    max_model_len: int | None = field(default=None, metadata=doc("vLLM: context length cap (default: the model's)."))
    tensor_parallel_size: int = field(default=1, metadata=doc("vLLM: GPUs per model replica."))
    data_parallel_size: int = field(default=1, metadata=doc("vLLM: model replicas."))
    gpu_memory_utilization: float = field(default=0.9, metadata=doc("vLLM on GPU: fraction of device memory."))
    seed: int = field(default=0, metadata=doc("Seed of vLLM and of the random prompts."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights (HF backend and focus): only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoint (only if trusted)."))

    def __post_init__(self) -> None:
        self.output = check_output_folder(self.output, allow_nonempty=True)
        self.data = Path(self.data) if self.data is not None else None
        checks = [
            (bool(self.models), "Give at least one --model."),
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}."),
            (not self.names or len(self.names) == len(self.models),
             f"{len(self.names)} --name for {len(self.models)} --model: give one name per model, or none."),
            (self.data is not None or self.random_prompts > 0,
             "No prompts: pass --data (a dataset or a leaf analyze folder) or --random-prompts N."),
            (self.max_tokens >= 1 and self.iterations >= 1 and self.warmup >= 0,
             "--max-tokens and --iterations must be at least 1, --warmup at least 0."),
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}."),
            (self.random_prompts >= 0 and self.random_input_len >= 1 and self.random_output_len >= 1,
             "--random-prompts must be 0 or more, --random-input-len and --random-output-len at least 1."),
            (self.focus_samples >= 0, f"--focus-samples must be 0 or more, got {self.focus_samples}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.max_model_len is None or self.max_model_len >= 1,
             f"--max-model-len must be at least 1, got {self.max_model_len}."),
            (self.tensor_parallel_size >= 1 and self.data_parallel_size >= 1,
             "--tensor-parallel-size and --data-parallel-size must be at least 1."),
            (0 < self.gpu_memory_utilization <= 1,
             f"--gpu-memory-utilization is a fraction in (0, 1], got {self.gpu_memory_utilization}."),
        ]
        for ok, message in checks:
            if not ok:
                raise LeafError(message)
        self.sandbox()  # its options' checks

    def fingerprint(self) -> dict:
        """What makes two serve runs the same measurement: every setting but where it goes and how many sandbox
        workers grade it, and the data's sha256 (a path names a file, not its rows)."""
        from leaf.run_folder import code_version, data_digest

        skip = {"output", "allow_code_execution", "sandbox_workers"}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in skip}
        return {**values, "data_sha256": data_digest(self.data) if self.data is not None else None,
                "code": code_version()}

    def model_names(self) -> list[str]:
        if self.names:
            return list(self.names)
        names = []
        for path in self.models:
            base = Path(path).name or path
            if Path(path).name == "final" and Path(path).parent.name:  # runs/distill/final -> distill
                base = Path(path).parent.name
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names


def _sets(problems, tokenizer, config: ServeConfig) -> dict[str, dict]:
    """Prompt sets of one model: token ids, budgets and the reference answers to score against."""
    from leaf.serve.prompts import random_prompts, render

    # pruned: every problem, those without detected spans unchanged, so that it compares like for like
    texts_of = {"original": [(p, p.prompt) for p in problems],
                "clean": [(p, p.clean) for p in problems if p.clean],
                "pruned": [(p, p.pruned or p.prompt) for p in problems] if any(p.pruned for p in problems) else []}
    sets: dict[str, dict] = {}
    for name, pairs in texts_of.items():
        if pairs:
            sets[name] = {"prompts": [render(tokenizer, t, chat_template=config.chat_template) for _, t in pairs],
                          "answers": [p.clean_answer if name == "clean" else p.answer for p, _ in pairs],
                          "tests": [p.tests for p, _ in pairs],
                          "ignore_eos": False, "ids": [p.id for p, _ in pairs]}
    if config.random_prompts:
        sets["random"] = {"prompts": random_prompts(tokenizer, config.random_prompts, config.random_input_len,
                                                    config.seed),
                          "answers": None, "tests": None, "ignore_eos": True,
                          "ids": list(range(config.random_prompts))}
    for name, prompt_set in sets.items():
        budget = config.random_output_len if name == "random" else config.max_tokens
        prompt_set["max_tokens"] = [budget] * len(prompt_set["prompts"])
    return sets


def _accuracy(completions, prompt_set: dict, sandbox) -> tuple[dict | None, list]:
    """Greedy accuracy: math rows by their final answer, code rows by running their tests in the sandbox (pass@1).
    Returns the figures (None when no row has a reference) and each completion's leaf.grading verdict, which
    generations.jsonl records per problem (the demo reads it instead of grading again)."""
    from leaf.answers import checker_counts
    from leaf.grading import Item, grade_detailed

    items = [Item(c.text, answer=a, tests=t) for c, a, t in zip(completions, prompt_set["answers"],
                                                                 prompt_set["tests"])]
    graded = grade_detailed(items, sandbox, description="running the tests of code answers")
    verdicts = [g.correct for g in graded if g.correct is not None]
    if not verdicts:
        return None, graded
    correct = sum(verdicts)
    code = sum(t is not None for t in prompt_set["tests"])
    checks = [g.check for g in graded if g.check is not None]
    return {"accuracy": correct / len(verdicts), "correct": correct, "scored": len(verdicts),
            **({"answer_checking": checker_counts(checks)} if checks else {}),
            **({"pass@1": correct / len(verdicts), "code_rows": code} if code else {})}, graded


def _verdict(graded) -> dict:
    """A generation's grade as generations.jsonl records it: correct (None: no reference) and, for a math row,
    the answer the checker read and which checker decided."""
    if graded is None:
        return {"correct": None}
    out = {"correct": graded.correct}
    if graded.check is not None:
        out["answer"] = graded.check.answer
        out["checker"] = graded.check.decided_by
    return out


def benchmark(engine, prompt_set: dict, config: ServeConfig):
    """Warmup, then `iterations` timed runs; the figures and the first timed run's completions."""
    from leaf.serve.metrics import summarize_iterations

    prompts, budgets = prompt_set["prompts"], prompt_set["max_tokens"]
    for _ in range(config.warmup):
        engine.generate(prompts[:8], [min(b, 16) for b in budgets[:8]], ignore_eos=prompt_set["ignore_eos"])
    runs, first = [], None
    for _ in range(config.iterations):
        completions, duration = engine.generate(prompts, budgets, ignore_eos=prompt_set["ignore_eos"])
        runs.append(([c.timing for c in completions], duration))
        first = first or completions
    return summarize_iterations(runs), first


def run_serve(config: ServeConfig, *, progress: bool = True) -> dict:
    from leaf.run_folder import FolderLock, check_rerun_folder
    from leaf.serve.prompts import load_problems

    fields = dict(prompt_field=config.prompt_field, response_field=config.response_field,
                  clean_field=config.clean_field, answer_field=config.answer_field, id_field=config.id_field,
                  gold_field=config.gold_field, limit=config.limit)
    problems = load_problems(config.data, **fields) if config.data is not None else []
    if code := sum(p.tests is not None for p in problems):  # before any model loads: running code is opt-in
        config.sandbox().require(f"leaf serve on {config.data} ({code} code rows)", code * len(config.models))
    # the same settings and data measure again into their folder; another run's folder (or any other) is refused
    fingerprint = config.fingerprint()
    check_rerun_folder(config.output, config.output / "results.json", fingerprint, what="a serve",
                       ignore=(config.output / ".lock",))
    lock = FolderLock(config.output, "serve").acquire()   # a second serve on this folder is refused from here on
    try:
        return _serve_all(config, problems, fingerprint, progress)
    finally:
        lock.release()


def _serve_all(config: ServeConfig, problems, fingerprint: dict, progress: bool) -> dict:
    from leaf.io import write_json_atomic, write_text_atomic
    from leaf.serve.focus import FocusSample
    from leaf.serve.report import markdown, plot

    engine_args = dict(device=config.device, dtype=config.dtype, seed=config.seed,
                       max_model_len=config.max_model_len, tensor_parallel_size=config.tensor_parallel_size,
                       data_parallel_size=config.data_parallel_size,
                       gpu_memory_utilization=config.gpu_memory_utilization, batch_size=config.batch_size,
                       allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    names = config.model_names()
    from leaf.hooks.loading import check_local_folder, resolve_source

    for path in config.models:  # before any model loads, for every backend: paths and the loading policy
        source = resolve_source(path)
        if Path(source).exists():
            check_local_folder(Path(source), config.allow_pickle)
    if config.chat_template and problems:  # before any model loads: each model's chat template
        from leaf.hooks.loading import load_tokenizer

        for path in config.models:
            if not getattr(load_tokenizer(path, trust_remote_code=config.trust_remote_code), "chat_template", None):
                raise LeafError(f"{path} has no chat template, so its prompts cannot be rendered as a chat. Pass "
                                "--no-chat-template to send every model the plain prompt text, or use an instruct "
                                "model.")
    focus_items = [FocusSample(p.prompt, p.response, p.confounders) for p in problems
                   if p.confounders and p.response][: config.focus_samples]
    results: dict = {"models": {}, "settings": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in asdict(config).items()}, "fingerprint": fingerprint,
                     "problems": len(problems),
                     "confounder_source": sorted({p.confounder_source for p in problems if p.confounder_source})}
    generations = []
    from rich.console import Console
    from rich.progress import Progress

    with Progress(disable=not progress, console=Console(stderr=True)) as bar:
        task = bar.add_task("serving models", total=len(names))
        for name, path in zip(names, config.models):
            results["models"][name] = _serve_one(name, path, problems, focus_items, config, engine_args, generations)
            bar.advance(task)
    results["comparisons"] = comparisons(results["models"])
    config.output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config.output / "generations.jsonl", "".join(json.dumps(g) + "\n" for g in generations))
    write_text_atomic(config.output / "results.md", markdown(results))
    plot(results, config.output / "results.png")
    write_json_atomic(config.output / "results.json", results)  # last: a folder with results.json is complete
    return results


def _serve_one(name, path, problems, focus_items, config, engine_args, generations) -> dict:
    from leaf.serve.engines import make_engine
    from leaf.serve.focus import attention_focus

    engine = make_engine(config.backend, path, **engine_args)
    entry = {"path": path, "engine": engine.settings, "sets": {}}
    try:
        for set_name, prompt_set in _sets(problems, engine.tokenizer, config).items():
            figures, completions = benchmark(engine, prompt_set, config)
            graded = [None] * len(completions)
            if prompt_set["answers"] is not None:
                accuracy, graded = _accuracy(completions, prompt_set, config.sandbox())
                figures.update(accuracy or {})
            entry["sets"][set_name] = figures
            generations += [{"model": name, "set": set_name, "id": i, "text": c.text,
                             "output_tokens": len(c.token_ids), **_verdict(g)}
                            for i, c, g in zip(prompt_set["ids"], completions, graded)]
    finally:
        engine.close()
    if focus_items:  # vLLM exposes no attention: the HF model through leaf.hooks
        from leaf.hooks import load_model

        hooked = load_model(path, device=config.device, dtype=config.dtype, allow_pickle=config.allow_pickle,
                            trust_remote_code=config.trust_remote_code)
        entry["attention_focus"] = attention_focus(hooked, focus_items, batch_size=config.batch_size,
                                                   chat_template=config.chat_template)
        del hooked
    return entry


def speedup_spread(speedup: float | None, new: dict, old: dict, key: str = "requests_per_second") -> float | None:
    """Std of a throughput ratio new/old from each side's run-to-run std (first-order error propagation)."""
    import math

    if speedup is None or not new.get(key) or not old.get(key):
        return None
    relative = math.hypot(new.get(f"{key}_std", 0.0) / new[key], old.get(f"{key}_std", 0.0) / old[key])
    return speedup * relative


def comparisons(models: dict) -> dict:
    """Ratios: every model against the first (per prompt set), pruned vs original per model, focus changes."""
    from leaf.serve.metrics import SERVE_METRICS, ratio

    names = list(models)
    base = models[names[0]]
    out: dict = {"baseline": names[0], "vs_baseline": {}, "pruned_vs_original": {}}
    for name in names[1:]:
        entry, row = models[name], {}
        for set_name, figures in entry["sets"].items():
            ref = base["sets"].get(set_name)
            if ref:
                row[set_name] = {m.key: ratio(figures.get(m.key), ref.get(m.key)) for m in SERVE_METRICS
                                 if m.compared}
                if "accuracy" in figures and "accuracy" in ref:
                    row[set_name]["accuracy_delta"] = figures["accuracy"] - ref["accuracy"]
        bf, ef = base.get("attention_focus"), entry.get("attention_focus")
        if bf and ef:
            row["attention_focus"] = {"baseline": bf["focus"], "model": ef["focus"],
                                      "delta": ef["focus"] - bf["focus"],
                                      "relative_change": ratio(ef["focus"] - bf["focus"], bf["focus"]),
                                      "wasted_relative_change": ratio(ef["wasted"] - bf["wasted"], bf["wasted"])}
        out["vs_baseline"][name] = row
    for name, entry in models.items():
        original, pruned = entry["sets"].get("original"), entry["sets"].get("pruned")
        if original and pruned:
            speedup = ratio(pruned["requests_per_second"], original["requests_per_second"])
            spread = speedup_spread(speedup, pruned, original)
            out["pruned_vs_original"][name] = {
                "speedup_requests_per_second": speedup,
                # run-to-run spread of the speedup (the two throughputs' relative std combined): a speedup whose
                # spread reaches 1.0 is not told apart from noise
                "speedup_requests_per_second_std": spread,
                "speedup_distinct_from_1": (None if speedup is None or spread is None
                                            else abs(speedup - 1) > spread),
                "speedup_mean_e2el": ratio(original["mean_e2el_ms"], pruned["mean_e2el_ms"]),
                "input_token_ratio": ratio(original["total_input_tokens"], pruned["total_input_tokens"]),
                # fewer output tokens also speeds a set up: the speedup is only about pruning at equal output
                "output_tokens": {"original": original["total_output_tokens"],
                                  "pruned": pruned["total_output_tokens"]},
                "output_token_ratio": ratio(original["total_output_tokens"], pruned["total_output_tokens"]),
            }
    return out
