"""Stage 1, `leaf analyze`: score every token of a teacher/student pair, detect the confounders, prune them into
counterfactuals, and write the analyze folder (see `leaf.records`) that the other stages read.

Modules: `config` (settings and their checks), `run` (the run: folder, models, windows, merge), `windows` (one
window's jobs and detection), `select` (--select / --verify by greedy generation), `parts` (per-window files,
--resume), `merge` (final files and the printed summary), `detect` / `scoring` (the per-unit math),
`teacher_scores` (--teacher-only stores), `report` (report.html). Importing this package loads only the config
(no torch), so the CLI starts fast; the rest loads on first use.
"""

from leaf.analyze.config import (AGGREGATES, DOMAINS, LEVELS, PRUNING, SPAN_UNITS, TEMPLATES, THRESHOLD_MODES,
                                 UNPARSABLE, AnalyzeConfig)

_LAZY = {"run_analyze": "leaf.analyze.run", "merge_output": "leaf.analyze.merge",
         "format_summary": "leaf.analyze.merge", "format_teacher_scores_summary": "leaf.analyze.merge",
         "window_done": "leaf.analyze.parts"}

__all__ = ["AGGREGATES", "DOMAINS", "LEVELS", "PRUNING", "SPAN_UNITS", "TEMPLATES", "THRESHOLD_MODES", "UNPARSABLE",
           "AnalyzeConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leaf.analyze' has no attribute {name!r}")
