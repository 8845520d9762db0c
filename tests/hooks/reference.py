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


def _logprob(logits: torch.Tensor, ids: torch.Tensor, target: torch.Tensor) -> float:
    """Mean log-probability of the target tokens of one sample (logit t - 1 predicts token t)."""
    positions = target.nonzero().flatten()
    return float(-F.cross_entropy(logits[positions - 1].float(), ids[positions]))


def component_module(model, component: str, layer: int):
    """The module a component names, found by hand for the two layouts the tests use (Llama-style, GPT-2)."""
    block = model.model.layers[layer] if hasattr(model, "model") else model.transformer.h[layer]
    attn = block.self_attn if hasattr(block, "self_attn") else block.attn
    return {"resid": block, "attn": attn, "mlp": block.mlp,
            "head": attn.o_proj if hasattr(attn, "o_proj") else attn.c_proj}[component]


def patching_map(model, target_ids, source_ids, pairs, target, component: str, num_heads: int):
    """Activation patching with plain forward hooks, one forward per (layer, position) or (layer, head):
    (L, T_target) or (L, H) of the change in the target tokens' mean log-prob; NaN where unpatched."""
    n_layers = model.config.num_hidden_layers
    acts = {}

    def keep(layer):
        def hook(_module, args, output):
            value = args[0] if component == "head" else (output[0] if isinstance(output, tuple) else output)
            acts[layer] = value[0].detach().clone()
        return hook

    handles = [component_module(model, component, layer).register_forward_hook(keep(layer))
               for layer in range(n_layers)]
    try:
        with torch.no_grad():
            model(source_ids[None])
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        clean = _logprob(model(target_ids[None]).logits[0], target_ids, target)
    columns = num_heads if component == "head" else len(target_ids)
    out = torch.full((n_layers, columns), float("nan"))
    for layer in range(n_layers):
        module = component_module(model, component, layer)
        for column in range(columns):
            if component == "head":
                width = acts[layer].shape[-1] // num_heads
                cols = slice(column * width, (column + 1) * width)
                edits = [(p, q) for p, q in pairs]

                def pre(_module, args, cols=cols, edits=edits, layer=layer):
                    x = args[0].clone()
                    for p, q in edits:
                        x[0, p, cols] = acts[layer][q, cols]
                    return (x, *args[1:])
                handle = module.register_forward_pre_hook(pre)
            else:
                partner = dict(pairs)
                if column not in partner:
                    continue

                def post(_module, _args, output, p=column, q=partner[column], layer=layer):
                    tensor = (output[0] if isinstance(output, tuple) else output).clone()
                    tensor[0, p] = acts[layer][q]
                    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor
                handle = module.register_forward_hook(post)
            try:
                with torch.no_grad():
                    out[layer, column] = _logprob(model(target_ids[None]).logits[0], target_ids, target) - clean
            finally:
                handle.remove()
    return out


def integrated_gradients(model, ids: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor, steps: int):
    """IG with plain autograd on inputs_embeds, one interpolation point at a time (midpoint rule), f = mean
    log-prob of the target tokens -> ((T,) attributions, f(input), f(baseline))."""
    embeds = model.get_input_embeddings()(ids[None])[0].detach().float()
    positions = target.nonzero().flatten()

    def f(e):
        logits = model(inputs_embeds=e[None]).logits[0]
        return -F.cross_entropy(logits[positions - 1].float(), ids[positions])

    total = torch.zeros_like(embeds)
    for k in range(steps):
        point = (baseline + (k + 0.5) / steps * (embeds - baseline)).requires_grad_(True)
        (grad,) = torch.autograd.grad(f(point), point)
        total += grad
    with torch.no_grad():
        return ((embeds - baseline) * total / steps).sum(-1), float(f(embeds)), float(f(baseline))


def rollout(probs: torch.Tensor, target: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout by hand: loops over layers and rows, no matrix helpers."""
    L, H, T, _ = probs.shape
    result = torch.eye(T, dtype=torch.float64)
    for layer in range(L):
        a = probs[layer].double().mean(0)
        a = residual * torch.eye(T, dtype=torch.float64) + (1 - residual) * a
        for row in range(T):
            a[row] = a[row] / a[row].sum()
        result = a @ result
    rows = [t - 1 for t in target.nonzero().flatten().tolist() if t >= 1]
    return result[rows].mean(0).float()


def instruction_and_confounders(enc, spans) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand, from offsets: (instruction tokens (prompt, not special, not the sink at 0), the instruction tokens
    that overlap any confounder character span (prompt-relative))."""
    instruction = enc.prompt_mask & ~enc.special_mask
    instruction[0] = False
    confounders = torch.zeros_like(instruction)
    for a, b in spans:
        confounders |= (enc.offsets[:, 0] < b + enc.prompt_span[0]) & (enc.offsets[:, 1] > a + enc.prompt_span[0])
    return instruction, confounders & instruction
