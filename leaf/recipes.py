"""Recipe files: the flags of a whole run, analyze -> distill -> eval -> serve, in one TOML or YAML file.

    leaf analyze --config recipes/qwen2.5-math-1.5b-from-qwen2.5-72b.toml
    leaf distill --config recipes/qwen2.5-math-1.5b-from-qwen2.5-72b.toml --max-steps 10   # flags override

A recipe has an [analyze], a [distill], an [eval] and a [serve] section whose keys are the commands' flags
(underscores or dashes: `batch_size` = `batch-size`; `lambda` for --lambda, `model` / `name` / `task` for the
--model / --name / --task lists), and an optional [recipe] section that only describes it (name, pairing, data,
expected cost, the paper's numbers: `paper_numbers`, which `leaf eval` puts beside its table).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from leaf.errors import LeafError

ALIASES = {"lambda": "lam", "lambda_schedule": "lam", "model": "models", "name": "names", "task": "tasks"}


def _config_classes() -> dict[str, type]:
    from leaf.analyze import AnalyzeConfig
    from leaf.distill import DistillConfig
    from leaf.eval import EvalConfig
    from leaf.serve.run import ServeConfig

    return {"analyze": AnalyzeConfig, "distill": DistillConfig, "eval": EvalConfig, "serve": ServeConfig}


def read_recipe(path: Path | str) -> dict[str, Any]:
    """The recipe file as a dict of sections; a clear error for a missing file or a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise LeafError(f"Recipe file {path} does not exist (see recipes/ for examples).")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            recipe = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            recipe = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            recipe = json.loads(text)
        else:
            raise LeafError(f"Recipe file {path} must end in .toml, .yaml, .yml or .json.")
    except LeafError:
        raise
    except Exception as exc:  # tomllib, yaml and json each raise their own parse error types
        raise LeafError(f"Recipe file {path} does not parse: {exc}") from None
    if not isinstance(recipe, dict):
        raise LeafError(f"Recipe file {path} must hold sections ([analyze], [distill], [eval], [serve]), not a "
                        f"{type(recipe).__name__}.")
    unknown = set(recipe) - {"recipe", *_config_classes()}
    if unknown:
        raise LeafError(f"Recipe file {path} has unknown section(s) {', '.join(sorted(unknown))}; use analyze, "
                        "distill, eval, serve (and recipe for a description).")
    return recipe


def section_values(path: Path | str, section: str) -> dict[str, Any]:
    """One section's values keyed by config field name; unknown keys are an error that lists the valid ones."""
    recipe = read_recipe(path)
    values = recipe.get(section) or {}
    if not isinstance(values, dict):
        raise LeafError(f"[{section}] in {path} must be a table of flag = value.")
    allowed = {f.name for f in fields(_config_classes()[section])}
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in allowed:
            raise LeafError(f"[{section}] in {path}: unknown key {key!r}. Valid keys: {', '.join(sorted(allowed))}.")
        out[name] = value
    return out


def build_configs(path: Path | str) -> dict[str, Any]:
    """Every section of a recipe as its run configuration (AnalyzeConfig, DistillConfig, EvalConfig, ServeConfig),
    validated, without loading a model or reading data."""
    recipe = read_recipe(path)
    return {section: cls(**section_values(path, section)) for section, cls in _config_classes().items()
            if section in recipe}
