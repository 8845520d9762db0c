"""The documentation's CLI tour runs as written: the first command block of docs/tour.md ("A tour of the CLI") and of
the analyze, distill and serve pages, executed in order in a clean folder. Only sizes shrink (tiny models, 4 samples, 2 steps, 8 new
tokens); optional flags shown in [brackets] are left out."""

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from leaf.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = (("tour.md", "# A tour of the CLI"), ("analyze.md", "# `leaf analyze`"), ("distill.md", "# `leaf distill`"),
         ("serve.md", "# `leaf serve`"))
SMALLER = [(r"--size small", ""), (r"--limit \d+", "--limit 4"), (r"--max-steps \d+", "--max-steps 2")]
SERVE_LIMITS = ["--limit", "4", "--max-tokens", "8", "--iterations", "1", "--warmup", "0", "--focus-samples", "1"]


def tour_commands() -> list[str]:
    commands = []
    for page, heading in PAGES:
        source = (ROOT / "docs" / page).read_text()
        start = source.index(heading)
        opening = source.index("```bash\n", start) + 8
        block = source[opening: source.index("```", opening)]
        text = re.sub(r"\\\n\s*", " ", block)                      # join continued lines
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line)                      # trailing comments
            line = re.sub(r"\[[^\]]*\]", "", line).strip()            # optional flags
            if line.startswith("leaf ") and "--openai" not in line:
                for pattern, replacement in SMALLER:
                    line = re.sub(pattern, replacement, line)
                commands.append(line)
    return commands


def test_the_tour_blocks_are_found():
    names = [shlex.split(c)[1] for c in tour_commands()]
    assert names == ["tiny-model", "saliency", "tiny-model", "tiny-model", "analyze", "distill", "serve"], names


def test_the_tour_runs_as_written(tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in tour_commands():
        args = shlex.split(command)[1:]
        if args[0] == "serve":
            args += SERVE_LIMITS
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    runs = tmp_path / "runs"
    saliency = json.loads((runs / "saliency.json").read_text())       # every command's output, read back
    assert saliency and "Tom has 3 apples" in json.dumps(saliency)
    analyzed = json.loads((runs / "analyze" / "summary.json").read_text())
    assert analyzed["counts"]["analysed"] == 4
    records = [json.loads(line) for line in (runs / "analyze" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "ok" and r["gold_spans"] is not None for r in records)
    distilled = json.loads((runs / "distill" / "summary.json").read_text())
    assert distilled["steps"] == 2 and (runs / "distill" / "final" / "model.safetensors").exists()
    assert [json.loads(line)["step"] for line in (runs / "distill" / "log.jsonl").read_text().splitlines()] == [1, 2]
    served = json.loads((runs / "serve" / "results.json").read_text())
    assert len(served["models"]) == 2
    for entry in served["models"].values():
        assert entry["sets"]["original"]["scored"] == 4 and entry["sets"]["original"]["total_output_tokens"] > 0
