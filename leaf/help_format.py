"""`--help` that a user can read in any width: each option on a line of its own (names, negative switch, type,
required), its help below it across the whole panel.

typer lays an options panel out as one table row per option with six columns (required, names, short names,
negative names, type, help); in 80 columns the help column shrinks to a few characters and rich cuts whatever does
not fit with "…" (`leaf distill --help` lost 20 option names and help texts that way). `use_readable_options`
replaces typer's panel renderer with this two-line layout; panels, usage, command lists and markup stay typer's.
"""

from __future__ import annotations


def _options_panel(*, name, params, ctx, markup_mode, console) -> None:
    """One panel of options: a heading line per option (names, negative switch, type), its help indented below
    (typer's own, with the default and [required]), long words folded, never cut."""
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils as ru  # typer's styles and its help text builder

    table = Table(show_header=False, box=None, expand=True, pad_edge=False, padding=(0, 1))
    table.add_column(overflow="fold", ratio=1)
    for param in params:
        names = [o for o in param.opts if o.startswith("--")] or [param.opts[0] if param.opts else param.name]
        if not any(o.startswith("-") for o in param.opts):  # an argument: its metavar
            names = [getattr(param, "display_name_raw", None) or param.name]
        head = Text(", ".join(names), style=ru.STYLE_OPTION)
        shorts = [o for o in param.opts if o.startswith("-") and not o.startswith("--")]
        if shorts:
            head.append(", " + ", ".join(shorts), style=ru.STYLE_SWITCH)
        if param.secondary_opts:
            head.append(" / " + ", ".join(param.secondary_opts), style=ru.STYLE_NEGATIVE_OPTION)
        kind = param.display_type_rich(ctx=ctx)
        if kind:
            head.append(f"  {kind}", style=ru.STYLE_TYPES)
        table.add_row(head)
        table.add_row(Padding(ru._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode), (0, 0, 0, 4)))
    if params:
        console.print(Panel(table, border_style=ru.STYLE_OPTIONS_PANEL_BORDER, title=name,
                            title_align=ru.ALIGN_OPTIONS_PANEL))


def use_readable_options() -> None:
    """Render every leaf command's options panels with `_options_panel` (typer calls the module's function)."""
    from typer import rich_utils

    rich_utils._print_options_panel = _options_panel
