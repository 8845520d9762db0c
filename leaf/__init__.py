"""leaf: LeaF (Learning to Focus) causal attention distillation, with nnsight hooks and vLLM serving.

Packages: `leaf` (the method and the CLI), `leaf.hooks` (hook API, from hooks/), `leaf.serve` (vLLM layer, from
serve/). See README.md.
"""

__version__ = "0.1.0"
