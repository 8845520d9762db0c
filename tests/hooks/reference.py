"""Plain-PyTorch references the hook API is checked against: autograd on inputs_embeds, output_attentions on an
eager model, register_forward_hook. Each sample runs alone (no padding), so a padding bug shows up as a mismatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def eager_model(path: str):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def saliency(model, ids: torch.Tensor, target: torch.Tensor, *, p: int = 2, x_input: bool = False):
    """||d mean-NLL(target tokens) / d e_i||_p for one unpadded sample -> ((T,), loss)."""
    embeds = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0]
    positions = target.nonzero().flatten()
    loss = F.cross_entropy(logits[positions - 1].float(), ids[positions])
    (grad,) = torch.autograd.grad(loss, embeds)
    values = grad[0] * embeds[0].detach() if x_input else grad[0]
    return values.float().norm(p=p, dim=-1), float(loss.detach())


def attentions(model, ids: torch.Tensor) -> torch.Tensor:
    """(L, H, T, T) attention probabilities of one unpadded sample."""
    with torch.no_grad():
        out = model(ids[None], output_attentions=True)
    return torch.stack([a[0] for a in out.attentions])


def mass(probs: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Mean over query rows of the probability summed over key columns: (L, H, T, T) -> (L, H)."""
    return probs[:, :, query][:, :, :, key].sum(-1).mean(-1)


def module_output_and_grad(model, ids: torch.Tensor, target: torch.Tensor, module_name: str):
    """A module's output, and the gradient of the mean target NLL w.r.t. it, via a plain forward hook."""
    seen = {}

    def hook(_module, _args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        tensor.retain_grad()
        seen["out"] = tensor

    handle = model.get_submodule(module_name).register_forward_hook(hook)
    try:
        embeds = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits[0]
        positions = target.nonzero().flatten()
        F.cross_entropy(logits[positions - 1].float(), ids[positions]).backward()
    finally:
        handle.remove()
    return seen["out"][0].detach(), seen["out"].grad[0]
