"""Help text and defaults live on the config dataclasses; the command line is made from them, so that the library
and the CLI say the same thing and nothing is written twice.

    @app.command("analyze")
    @config_options(AnalyzeConfig, flags=FLAGS)
    def analyze(fields: ConfigFields, json_out: bool = False):   # `fields`: one option per AnalyzeConfig field
        run_analyze(AnalyzeConfig(**fields))

A field `batch_size: int = field(default=8, metadata=doc("..."))` becomes `--batch-size` of type int, default 8,
with that help; a list field is a repeatable flag named in the singular (`models` -> `--model`); a bool is
`--x/--no-x`; a field without a default is a required option. What the command line adds to a field (other flag
names, choices, bounds, an old name still read) is a `Flag`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from enum import Enum
from typing import Annotated, Any

ConfigFields = dict  # a command's `fields` parameter: config field name -> the value given (or the field's default)


def doc(text: str) -> dict:
    """Field metadata: `field(default=..., metadata=doc("What it does."))`."""
    return {"help": text}


def field_help(config_class, name: str) -> str:
    """The help text a config dataclass carries for one field, escaped for typer's rich help ("[start, end]" would
    otherwise be read as markup and vanish)."""
    from rich.markup import escape

    return escape(config_class.__dataclass_fields__[name].metadata["help"])


def choices(name: str, values) -> type[Enum]:
    """A str Enum of allowed values, which typer shows as the choices of an option."""
    return Enum(name, {value: value for value in values}, type=str)


class Flag:
    """What the command line adds to a config field; its type, default and help stay the field's.

    names: flag names instead of the one made from the field's name; choices: the allowed values; hidden: an old
    flag name still read but not shown; optional: a field without a default that the command may do without (it
    checks); option: more typer.Option keywords (min, metavar, rich_help_panel)."""

    def __init__(self, *names: str, choices: tuple[str, ...] = (), hidden: str | None = None, optional: bool = False,
                 **option: Any) -> None:
        self.names, self.choices, self.hidden, self.optional = names, tuple(choices), hidden, optional
        self.option = option


def config_options(config_class, flags: dict[str, Flag] | None = None, panels: dict[str, str] | None = None):
    """Decorator of a typer command: its parameter `fields` becomes one option per field of `config_class` (help
    panel from `panels` by field name), and the command receives their values as one dict, ready for
    `config_class(**fields)`: choices as plain strings, a list not given left out so that the field's default
    applies, an old flag name's value in place of the new one's."""
    flags, panels = flags or {}, panels or {}
    hints = typing.get_type_hints(config_class)
    config_fields = dataclasses.fields(config_class)

    def decorate(command):
        made = []
        for f in config_fields:
            flag = flags.get(f.name, Flag())
            made += _parameters(f, hints[f.name], flag, field_help(config_class, f.name), panels.get(f.name))
        signature = inspect.signature(command, eval_str=True)
        params = [q for p in signature.parameters.values()
                  for q in (made if p.name == "fields" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)])]

        @functools.wraps(command)
        def wrapper(**kwargs):
            fields = {}
            for f in config_fields:
                value, old = kwargs.pop(f.name), kwargs.pop(_old(f.name), None)
                value = value if old is None else old
                if value is None and f.default_factory is not dataclasses.MISSING:
                    continue
                fields[f.name] = [_plain(v) for v in value] if isinstance(value, (list, tuple)) else _plain(value)
            return command(fields=fields, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return decorate


def _parameters(f: dataclasses.Field, hint, flag: Flag, help: str, panel: str | None) -> list[inspect.Parameter]:
    """The typer parameter of one config field, and of its old flag name if it has one."""
    import typer

    base = _without_none(hint)
    many = typing.get_origin(base) is list
    if flag.choices:
        enum = choices("".join(part.title() for part in f.name.split("_")), flag.choices)
        base = list[enum] if many else enum
    if f.default is not dataclasses.MISSING:
        default = base(f.default) if flag.choices and not many and f.default is not None else f.default
    elif f.default_factory is not dataclasses.MISSING or flag.optional:
        default = None
    else:
        default = inspect.Parameter.empty
    names = flag.names or ((f"--{f.name.removesuffix('s').replace('_', '-')}",) if many else ())
    option = typer.Option(*names, help=help, **({"rich_help_panel": panel} if panel else {}), **flag.option)
    annotation = base | None if default is None else base
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                annotation=Annotated[annotation, option])]
    if flag.hidden:
        params.append(inspect.Parameter(_old(f.name), inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[base | None, typer.Option(flag.hidden, hidden=True)]))
    return params


def _old(name: str) -> str:
    return f"{name}_old_name"


def _without_none(hint):
    """X for `X | None`, else the hint itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _plain(value):
    return value.value if isinstance(value, Enum) else value


def command_line(ctx, skip: set[str] = frozenset({"config_file"})) -> list[str]:
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
            args += [flag, str(_plain(value))]
    return args
