"""Stage 1, `leaf analyze`: score every token of a teacher/student pair, detect the confounders, prune them into
counterfactuals, and write the analyze folder (see `leaf.records`) that the other stages read."""

from leaf.analyze.config import (AGGREGATES, LEVELS, PRUNING, SPAN_UNITS, TEMPLATES, THRESHOLD_MODES,
                                 AnalyzeConfig)
from leaf.analyze.run import format_summary, format_teacher_scores_summary, merge_output, run_analyze, window_done

__all__ = ["AGGREGATES", "LEVELS", "PRUNING", "SPAN_UNITS", "TEMPLATES", "THRESHOLD_MODES", "AnalyzeConfig",
           "format_summary", "format_teacher_scores_summary", "merge_output", "run_analyze", "window_done"]
