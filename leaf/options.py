"""Help text lives on the config dataclasses; the CLI reads it from there, so library and CLI say the same thing."""

from __future__ import annotations


def doc(text: str) -> dict:
    """Field metadata: `field(default=..., metadata=doc("What it does."))`."""
    return {"help": text}


def field_help(config_class, name: str) -> str:
    """The help text a config dataclass carries for one field, escaped for typer's rich help ("[start, end]" would
    otherwise be read as markup and vanish)."""
    from rich.markup import escape

    return escape(config_class.__dataclass_fields__[name].metadata["help"])
