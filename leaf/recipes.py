"""Recipe files: the flags of a whole run, analyze -> distill -> eval -> serve, in one TOML or YAML file.

    leaf analyze --config recipes/qwen2.5-math-1.5b-from-qwen2.5-72b.toml
    leaf distill --config recipes/qwen2.5-math-1.5b-from-qwen2.5-72b.toml --max-steps 10   # flags override

A recipe has an [analyze], a [distill], an [eval] and a [serve] section whose keys are the commands' flags
(underscores or dashes: `batch_size` = `batch-size`; `lambda` for --lambda, `model` / `name` / `task` for the
--model / --name / --task lists, `max_tokens` for --max-tokens: one name per setting, of the type the flag takes),
and an optional [recipe] section that only describes it (name, pairing, data,
expected cost, the paper's numbers: `paper_numbers`, which `leaf eval` puts beside its table).
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from leaf.errors import LeafError
from leaf.options import _without_none



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


def recipe_keys(config_class) -> dict[str, str]:
    """Recipe key -> config field: a key is its flag's name without the dashes (`max_tokens` for --max-tokens,
    `lambda` for --lambda, `model` for --model), `-` or `_` alike: one name per setting, on the command line and in
    a recipe."""
    from leaf.cli import FLAGS

    keys = {}
    hints = typing.get_type_hints(config_class)
    for f in fields(config_class):
        flag = FLAGS.get(f.name)
        many = typing.get_origin(_without_none(hints[f.name])) is list
        name = (flag.names[0] if flag is not None and flag.names else
                f"--{f.name.removesuffix('s')}" if many else f"--{f.name}")
        keys[name.removeprefix("--").replace("-", "_")] = f.name
    return keys


def check_type(where: str, key: str, value, hint) -> None:
    """A recipe value must have its setting's type: true/false for a switch (not "yes", not 1), a whole number for a
    count, a number for a rate, text for a name or path, a list (or one text) for a repeatable flag."""
    base = _without_none(hint)
    if value is None and base is not hint:
        return
    origin = typing.get_origin(base)
    if origin is list:
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, (str, int, float))
                                                                         and not isinstance(v, bool) for v in value))
        want = "a list (or one value)"
    elif base is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif base is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif base is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif base in (str, Path):
        ok, want = isinstance(value, str), "text (in quotes)"
    else:
        return
    if not ok:
        raise LeafError(f"{where}: {key} must be {want}, got {value!r}.")


def section_values(path: Path | str, section: str) -> dict[str, Any]:
    """One section's values keyed by config field name. Keys are the flags' names (recipe_keys); a field's own name
    where the flag's differs, an unknown key or a value of the wrong type is an error that says the fix."""
    recipe = read_recipe(path)
    values = recipe.get(section) or {}
    if not isinstance(values, dict):
        raise LeafError(f"[{section}] in {path} must be a table of flag = value.")
    config_class = _config_classes()[section]
    keys, hints = recipe_keys(config_class), typing.get_type_hints(config_class)
    named = {field: key for key, field in keys.items()}
    where = f"[{section}] in {path}"
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in keys:
            if name in named:
                raise LeafError(f"{where}: {key!r} is named {named[name]!r} (the flag --"
                                f"{named[name].replace('_', '-')}): one name per setting.")
            raise LeafError(f"{where}: unknown key {key!r}. Valid keys: {', '.join(sorted(keys))}.")
        check_type(where, key, value, hints[keys[name]])
        out[keys[name]] = value
    return out


def build_configs(path: Path | str) -> dict[str, Any]:
    """Every section of a recipe as its run configuration (AnalyzeConfig, DistillConfig, EvalConfig, ServeConfig),
    validated, without loading a model or reading data."""
    recipe = read_recipe(path)
    return {section: cls(**section_values(path, section)) for section, cls in _config_classes().items()
            if section in recipe}
