"""Token attribution methods behind one registry: pick one by name, list them with list_methods().

    from leaf.hooks import attribute, attribute_all, list_methods
    list_methods()        # ['attention_rollout', 'input_x_gradient', 'integrated_gradients', 'saliency']
    [scores] = attribute(model, [ids], [response_mask], method="integrated_gradients", steps=64)
    both = attribute_all(model, [ids], [response_mask], ["saliency", "input_x_gradient"])   # one backward pass

Every method scores each input token for the response: f(x) = mean log-probability of the target tokens
(target_mask; the response by default in leaf), on the input embeddings e_i.
    saliency              ||d loss / d e_i||_2, the LeaF saliency (unsigned; loss = -f)
    input_x_gradient      sum_d (df/de_i)_d (e_i)_d, signed (first-order Taylor term of f around 0)
    integrated_gradients  sum_d (e_i - b_i)_d * mean_k (df/de)(b + a_k (e - b))_{i,d}, signed; a_k the midpoints of
                          `steps` equal intervals of [0, 1]; sums to f(e) - f(b) as steps grow (completeness).
                          baseline: "mean" (default: the mean token embedding at every position), "zeros", "pad"
                          (the pad token's embedding everywhere) or a (T, D) tensor; the steps run as batches of
                          `batch_size` interpolations. With "zeros" (and "pad" where that row is zero, as in many
                          checkpoints) the path passes through 0, where RMSNorm/LayerNorm models change abruptly
                          (they are scale invariant elsewhere): the integral then needs very many steps.
    attention_rollout     Abnar & Zuidema (2020): per layer A = mean over heads (or max) of the attention
                          probabilities, mixed with the identity, A' = r I + (1 - r) A rows renormalised; the product
                          A'_L ... A'_1; a token's score is the mean of its column over the rows that predict a
                          target token (position t - 1 for each target t). Unsigned, sums to 1 per row.
saliency and input_x_gradient come from the same backward pass (attribute_all computes both at once). The names
are inseq's method ids; leaf's first names, grad_norm and grad_x_input, are still accepted (and keep their key in
attribute_all's result when asked for by them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nnsight
import torch

from leaf.errors import LeafError
from leaf.hooks import reductions
from leaf.hooks.batching import as_id_tensors, as_masks
from leaf.hooks.loading import HookedModel
from leaf.hooks.tracing import HookPlan, _envoy, _prepared, run


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    signed: bool
    compute: Callable[..., list[torch.Tensor]]


_REGISTRY: dict[str, Method] = {}
GRADIENT_METHODS = ("saliency", "input_x_gradient")  # computed together from one backward pass
# inseq's method ids are the names; leaf's first names stay readable as aliases
ALIASES = {"grad_norm": "saliency", "grad_x_input": "input_x_gradient"}


def register(name: str, description: str, *, signed: bool):
    """Add a method: compute(model, ids, masks, batch_size=..., **options) -> one (T,) float32 tensor per sample."""
    def wrap(fn):
        _REGISTRY[name] = Method(name, description, signed, fn)
        return fn
    return wrap


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def describe_methods() -> dict[str, str]:
    return {name: _REGISTRY[name].description for name in list_methods()}


def get_method(name: str) -> Method:
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise LeafError(f"Unknown attribution method {name!r}. Available: {', '.join(list_methods())}.")
    return _REGISTRY[name]


def attribute(model: HookedModel, samples: Sequence, target_mask: Sequence, method: str = "saliency", *,
              batch_size: int = 8, **options) -> list[torch.Tensor]:
    """One (T,) float32 score per token of each sample, by the named method."""
    chosen = get_method(method)
    ids = as_id_tensors(samples, model.max_length)
    masks = as_masks(target_mask, ids, "target_mask")
    for i, mask in enumerate(masks):
        if not mask[1:].any():
            raise LeafError(f"target_mask of sample {i} selects no token after position 0: nothing to attribute to.")
    return chosen.compute(model, ids, masks, batch_size=batch_size, **options)


def attribute_all(model: HookedModel, samples: Sequence, target_mask: Sequence, methods: Sequence[str], *,
                  batch_size: int = 8, options: dict[str, dict] | None = None) -> dict[str, list[torch.Tensor]]:
    """Several methods over the same samples; the gradient methods share one backward pass."""
    for name in methods:
        get_method(name)
    options = options or {}
    out: dict[str, list[torch.Tensor]] = {}
    gradient = [m for m in methods if ALIASES.get(m, m) in GRADIENT_METHODS]
    if gradient:
        ids = as_id_tensors(samples, model.max_length)
        both = _gradient_methods(model, ids, as_masks(target_mask, ids, "target_mask"), batch_size=batch_size)
        out.update({name: both[ALIASES.get(name, name)] for name in gradient})
    for name in methods:
        if name not in out:
            out[name] = attribute(model, samples, target_mask, name, batch_size=batch_size, **options.get(name, {}))
    return {name: out[name] for name in methods}


def _gradient_methods(model, ids, masks, *, batch_size: int) -> dict[str, list[torch.Tensor]]:
    results = run(model, ids, HookPlan(target_mask=masks, embedding_grads=True), batch_size=batch_size)
    return {"saliency": [r.embedding_grad.norm(dim=-1) for r in results],
            # f = -loss, so df/de = -d loss/de
            "input_x_gradient": [-(r.embedding_grad * r.embedding).sum(-1) for r in results]}


@register("saliency", "||d loss / d e_i||_2: the LeaF gradient saliency (unsigned; formerly grad_norm)",
          signed=False)
def _grad_norm(model, ids, masks, *, batch_size: int = 8) -> list[torch.Tensor]:
    return _gradient_methods(model, ids, masks, batch_size=batch_size)["saliency"]


@register("input_x_gradient", "sum_d (df/de_i * e_i): gradient x input, signed (formerly grad_x_input)",
          signed=True)
def _grad_x_input(model, ids, masks, *, batch_size: int = 8) -> list[torch.Tensor]:
    return _gradient_methods(model, ids, masks, batch_size=batch_size)["input_x_gradient"]


def _embeddings(model: HookedModel, ids: torch.Tensor) -> torch.Tensor:
    """The embedding module's output for one sequence, (T, D), read through the hooks."""
    [result] = run(model, [ids], HookPlan(outputs=[model.arch.embedding]))
    return result.outputs[model.arch.embedding].float()


def _ig_batch(model: HookedModel, ids: torch.Tensor, mask: torch.Tensor, path: torch.Tensor, loss_fn) -> dict:
    """One batch of interpolation points: replace the embedding output by `path` (B, T, D), backward the loss."""
    emb = _envoy(model, model.arch.embedding).output
    emb[:] = path.to(emb.dtype)
    emb.requires_grad_(True)
    got = {}
    losses = loss_fn(model.nnsight.output.logits, ids, mask)
    got["f"] = -losses.detach()
    with losses.sum().backward():
        got["grad"] = emb.grad
    return got


@register("integrated_gradients", "path integral of df/de from a baseline to the input, times (e - baseline), "
          "signed; sums to f(e) - f(baseline)", signed=True)
def _integrated_gradients(model, ids, masks, *, batch_size: int = 8, steps: int = 32,
                          baseline: str | torch.Tensor = "mean", return_details: bool = False):
    if steps < 1:
        raise LeafError("integrated_gradients needs steps >= 1.")
    out, details = [], []
    device = model.device
    for sample, mask in zip(ids, masks):
        x = _embeddings(model, sample)                                            # (T, D)
        if isinstance(baseline, torch.Tensor):
            base = baseline.float()
            if base.shape != x.shape:
                raise LeafError(f"The baseline has shape {tuple(base.shape)}; the sample's embeddings have "
                                f"{tuple(x.shape)}.")
        elif baseline == "zeros":
            base = torch.zeros_like(x)
        elif baseline == "mean":
            weight = model.hf_model.get_input_embeddings().weight.detach().float()
            base = weight.mean(0).cpu().expand_as(x).clone()
        elif baseline == "pad":
            base = _embeddings(model, torch.full_like(sample, model.pad_token_id))
        else:
            raise LeafError(f"Unknown baseline {baseline!r}: use mean, zeros, pad, or a (T, D) tensor.")
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps            # midpoint rule
        total = torch.zeros_like(x)
        with _prepared(model, eager=False):
            for start in range(0, steps, batch_size):
                a = alphas[start: start + batch_size]
                path = (base[None] + a[:, None, None] * (x - base)[None]).to(device)  # (B, T, D)
                batch_ids = sample[None].expand(len(a), -1).to(device)
                batch_mask = mask[None].expand(len(a), -1).to(device)
                with model.nnsight.trace(input_ids=batch_ids):
                    got = nnsight.save(_ig_batch(model, batch_ids, batch_mask, path, reductions.mean_nll))
                total -= got["grad"].float().sum(0).cpu()                             # df/de = -d loss/de
        scores = ((x - base) * total / steps).sum(-1)
        out.append(scores)
        if return_details:
            f_x, f_b = (_f(model, sample, mask, e) for e in (x, base))
            details.append({"f_input": f_x, "f_baseline": f_b, "sum": float(scores.sum())})
    return (out, details) if return_details else out


def _f(model: HookedModel, ids: torch.Tensor, mask: torch.Tensor, embedding: torch.Tensor) -> float:
    """f at given input embeddings (the IG endpoints), through the same replacement as the path."""
    with _prepared(model, eager=False):
        with model.nnsight.trace(input_ids=ids[None].to(model.device)):
            got = nnsight.save(_ig_batch(model, ids[None].to(model.device), mask[None].to(model.device),
                                         embedding[None].to(model.device), reductions.mean_nll))
    return float(got["f"][0])


@register("attention_rollout", "Abnar & Zuidema attention rollout: identity-mixed, head-averaged attention "
          "multiplied through the layers (unsigned)", signed=False)
def _attention_rollout(model, ids, masks, *, batch_size: int = 8, residual: float = 0.5,
                       head_fusion: str = "mean") -> list[torch.Tensor]:
    if not 0 <= residual <= 1:
        raise LeafError(f"residual must be in [0, 1], got {residual}.")
    if head_fusion not in ("mean", "max"):
        raise LeafError(f"head_fusion must be mean or max, got {head_fusion!r}.")
    results = run(model, ids, HookPlan(attention_probs=True), batch_size=batch_size)
    return [rollout_scores(r.attention_probs, mask, residual=residual, head_fusion=head_fusion)
            for r, mask in zip(results, masks)]


def rollout_scores(probs: torch.Tensor, target_mask: torch.Tensor, *, residual: float = 0.5,
                   head_fusion: str = "mean") -> torch.Tensor:
    """Pure rollout on (L, H, T, T) probabilities -> (T,) scores (see the module docstring)."""
    fused = probs.float().mean(1) if head_fusion == "mean" else probs.float().amax(1)     # (L, T, T)
    eye = torch.eye(fused.shape[-1])
    rollout = eye
    for layer in fused:
        mixed = residual * eye + (1 - residual) * layer
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed @ rollout
    rows = torch.as_tensor(target_mask).bool().nonzero().flatten() - 1                   # positions predicting targets
    rows = rows[rows >= 0]
    return rollout[rows].mean(0)
