"""mkdocs hook: the command-line reference (docs/cli.md) rendered from leaf's typer app when the site is built, so
that it never drifts from the commands: one section per command with its `--help` as plain text, 100 columns."""

from __future__ import annotations

from mkdocs.plugins import event_priority

MARKER = "<!-- leaf-cli -->"


def command_help() -> str:
    """Markdown: a section per command, its help in a text block."""
    import typer
    from typer.testing import CliRunner

    from leaf.cli import app

    runner, parts = CliRunner(), []
    for name in typer.main.get_command(app).commands:
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
                               terminal_width=100, color=False)
        if result.exit_code != 0:
            raise RuntimeError(f"leaf {name} --help failed: {result.output}")
        parts.append(f"## leaf {name}\n\n```text\n{result.output.strip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs' hook signature
    return markdown.replace(MARKER, command_help()) if MARKER in markdown else markdown



SOURCE = "build/docs-src"   # mkdocs.yml's mkdocstrings `paths`


@event_priority(100)  # before mkdocstrings reads its `paths`: in a fresh clone the tree does not exist yet
def on_config(config):  # mkdocs' hook signature
    """The package as it installs, for the API reference's static analysis: leaf.hooks and leaf.serve live in the
    top-level hooks/ and serve/ folders (pyproject's package-dir), so griffe would not find them under leaf/. A
    tree of symbolic links, build/docs-src/leaf, puts them where the import names say (its __init__.py a copy:
    griffe looks for a package's modules beside the real path of its __init__.py)."""
    import shutil
    from pathlib import Path

    root = Path(config["config_file_path"]).parent
    package = root / SOURCE / "leaf"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    for source in [*(root / "leaf").iterdir(), root / "hooks", root / "serve"]:
        if source.name == "__pycache__":
            continue
        if source.name == "__init__.py":
            shutil.copyfile(source, package / source.name)
        else:
            (package / source.name).symlink_to(source.resolve())
    return config
