"""`leaf eval`: the standard benchmarks (GSM8K chain of thought, MATH-500) on the served models through
lm-evaluation-harness, from local data, with the same settings for every model; one table beside the paper's numbers.

Modules: `config` (EvalConfig: settings and their checks), `tasks` (the benchmarks: upstream lm-eval tasks pointed at
local files), `run` (run_eval: the harness's models, simple_evaluate, results.json), `report` (results.md). Importing
this package loads only the config and the task list (neither lm-eval nor torch), so the CLI starts fast.
"""

from leaf.eval.config import EvalConfig
from leaf.eval.tasks import TASKS, list_tasks

__all__ = ["TASKS", "EvalConfig", "list_tasks"]
