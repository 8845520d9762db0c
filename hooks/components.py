"""The components activation patching reads and writes, and where each lives in a decoder block: one registry.

`patching_sweep`, `leaf inspect --component` (its choices and default) and `Architecture.component_path` read
COMPONENTS; a new component is one entry. Light (no torch), so that the command line reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leaf.hooks.architecture import Architecture


@dataclass(frozen=True)
class Component:
    """help: what is patched; path: the module of layer i (`Architecture` -> dotted path); per_head: patched one
    attention head at a time, on the output projection's input (heads side by side), instead of a position's
    whole output."""

    help: str
    path: Callable[[Architecture, int], str]
    per_head: bool = False


COMPONENTS: dict[str, Component] = {
    "resid": Component("the residual stream: a decoder block's output", lambda arch, i: arch.layer_path(i)),
    "attn": Component("the self-attention's output", lambda arch, i: arch.attention_path(i)),
    "mlp": Component("the MLP's output", lambda arch, i: arch.mlp_path(i)),
    "head": Component("one attention head: its slice of the output projection's input",
                      lambda arch, i: arch.out_proj_path(i), per_head=True),
}


def get_component(name: str) -> Component:
    from leaf.errors import LeafError

    if name not in COMPONENTS:
        raise LeafError(f"Unknown component {name!r}: use {', '.join(COMPONENTS)}.")
    return COMPONENTS[name]
