"""Where the parts leaf needs live in a Hugging Face causal LM: one table and a fallback, no per-family code.

leaf needs three things from a model's module tree: the token embedding (its output is what saliency
differentiates), the list of decoder blocks, and the self-attention module inside a block (its output[1] holds
the attention probabilities under eager attention). The embedding comes from `get_input_embeddings()`, which every
HF model implements; the other two come from a short table of the names used across transformers, and when none
matches, from the module tree itself (the ModuleList with `num_hidden_layers` entries, the child whose class name
says Attention), so a new architecture works without a code change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from leaf.errors import LeafError

# Paths of the decoder-block list in the families transformers ships (Llama/Qwen/Mistral/Gemma/Phi..., GPT-2/GPT-J,
# GPT-NeoX/Pythia, OPT, MPT, Falcon).
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks",
               "model.language_model.layers", "transformer.layers")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
# the attention's output projection: its input is the heads' outputs side by side, (B, T, heads x head_dim)
OUT_PROJ_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "o")


@dataclass(frozen=True)
class Architecture:
    """Module paths inside one model, e.g. embedding="model.embed_tokens", layers="model.layers"."""

    embedding: str
    layers: str | None
    attention: str | None  # attribute of a decoder block
    num_layers: int
    num_heads: int
    mlp: str | None = None       # attribute of a decoder block
    out_proj: str | None = None  # attribute of the attention module

    def component_path(self, component: str, index: int) -> str:
        """Module whose output is the component of layer `index` (leaf.hooks.components.COMPONENTS): resid (the
        block), attn, mlp; head: the attention's output projection, whose input holds the heads."""
        from leaf.hooks.components import get_component

        return get_component(component).path(self, index)

    def mlp_path(self, index: int) -> str:
        if self.mlp is None:
            raise LeafError(f"Could not find the MLP inside a decoder block (looked for {', '.join(MLP_NAMES)} and "
                            "for a child whose class name contains 'MLP'); patch resid or attn instead.")
        return f"{self.layer_path(index)}.{self.mlp}"

    def out_proj_path(self, index: int) -> str:
        if self.out_proj is None:
            raise LeafError("Could not find the attention's output projection (looked for "
                            f"{', '.join(OUT_PROJ_NAMES)}); per-head patching needs it.")
        return f"{self.attention_path(index)}.{self.out_proj}"

    def layer_path(self, index: int) -> str:
        return f"{self.require_layers()}.{index}"

    def attention_path(self, index: int) -> str:
        if self.attention is None:
            raise LeafError(
                "Could not find the self-attention module inside a decoder block of this model (looked for "
                f"{', '.join(ATTENTION_NAMES)} and for a child whose class name contains 'Attention'). Attention "
                "hooks need it; saliency and module capture still work.")
        return f"{self.layer_path(index)}.{self.attention}"

    def require_layers(self) -> str:
        if self.layers is None:
            raise LeafError(
                f"Could not find the list of decoder blocks in this model (looked for {', '.join(LAYER_PATHS)} and "
                f"for a ModuleList with num_hidden_layers={self.num_layers} entries). Layer and attention hooks "
                "need it; pass module names to capture() instead.")
        return self.layers


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path ("model.layers.0.self_attn"), or a LeafError naming the missing part."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise LeafError(f"The model has no module {path!r} ({exc}). List the names with "
                        "`[name for name, _ in model.hf_model.named_modules()]`.") from None


def _find_layers(model: nn.Module, num_layers: int) -> str | None:
    for path in LAYER_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return path
    candidates = [name for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == num_layers and name]
    return candidates[0] if candidates else None


def _find_attention(block: nn.Module) -> str | None:
    for name in ATTENTION_NAMES:
        if isinstance(getattr(block, name, None), nn.Module):
            return name
    for name, child in block.named_children():
        if "attention" in type(child).__name__.lower():
            return name
    return None


def _find_child(block: nn.Module, names: tuple[str, ...], class_word: str | None) -> str | None:
    for name in names:
        if isinstance(getattr(block, name, None), nn.Module):
            return name
    if class_word:
        for name, child in block.named_children():
            if class_word in type(child).__name__.lower():
                return name
    return None


def discover(model: nn.Module) -> Architecture:
    """Find the embedding, decoder blocks and attention module of any HF causal LM."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    num_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    num_heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    embedding_module = model.get_input_embeddings()
    embedding = next((name for name, module in model.named_modules() if module is embedding_module), None)
    if embedding is None:
        raise LeafError(f"{type(model).__name__}.get_input_embeddings() returned a module that is not part of the "
                        "model's module tree; leaf cannot hook its output.")
    layers = _find_layers(model, num_layers)
    block = model.get_submodule(layers)[0] if layers else None
    attention = _find_attention(block) if block is not None else None
    mlp = _find_child(block, MLP_NAMES, "mlp") if block is not None else None
    out_proj = _find_child(getattr(block, attention), OUT_PROJ_NAMES, None) if attention else None
    return Architecture(embedding=embedding, layers=layers, attention=attention, num_layers=num_layers,
                        num_heads=num_heads, mlp=mlp, out_proj=out_proj)


def execution_order(model: nn.Module, device: torch.device) -> dict[str, int]:
    """Module name -> index of its first call in a forward pass (nnsight must read modules in this order).

    Registration order is not execution order (Llama registers rotary_emb after the layers but runs it first),
    so it is measured once on a two-token input with plain forward hooks, removed in `finally`.
    """
    order: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _args, _output):
            order.setdefault(name, len(order))
        return hook

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return order
