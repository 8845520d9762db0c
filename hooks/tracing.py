"""One nnsight trace per batch that serves every built-in hook: saliency, attention, module capture.

    from leaf.hooks import load_model, token_saliency, attention_mass
    model = load_model("path/to/model")
    sal = token_saliency(model, ids, target_mask=response_masks)              # list of (T,) float32
    mass = attention_mass(model, ids, query_mask=response_masks, key_masks={"prompt": prompt_masks})

All calls go through `run(model, samples, plan)`: one forward (and, when a gradient is asked for, one backward)
per batch, reading modules in execution order as nnsight requires. Model weights are frozen for the call (they get
no gradient), the model is put in eval mode, attention switches to eager only while attention is read, and all of
it is restored in `finally`, so the model is left exactly as it was even when a caller's loss function raises.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nnsight
import torch
from rich.console import Console
from rich.progress import Progress

from leaf.errors import LeafError
from leaf.hooks import reductions
from leaf.hooks.batching import MaskLike, TokenBatch, as_id_tensors, as_masks, iter_batches
from leaf.hooks.loading import HookedModel

# (logits (B, T, V), input_ids (B, T), target_mask (B, T) bool) -> per-sample loss (B,)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class HookPlan:
    """What one pass reads. Masks are per sample (one entry per token of that sample)."""

    saliency: str | None = None                 # "grad" | "grad_x_input" | None
    norm: str = "l2"                            # "l2" | "l1"
    target_mask: Sequence[MaskLike] | None = None   # tokens whose prediction forms the loss
    loss_fn: LossFn | None = None               # default: reductions.mean_nll
    query_mask: Sequence[MaskLike] | None = None    # attention mass: from these positions...
    key_masks: Mapping[str, Sequence[MaskLike]] | None = None  # ...onto each of these named key sets
    exclude_sink: bool = True                   # drop key position 0 (the attention sink) from every key set
    attention_probs: bool = False               # keep full (H, T, T) maps of the chosen layers
    layers: Sequence[int] | None = None         # attention layers (None: all); negative indices count from the end
    outputs: Sequence[str] = ()                 # module names whose output to keep
    grads: Sequence[str] = ()                   # module names whose output gradient to keep
    token_nll: bool = False                     # keep every token's surprisal -log p(x_t | x_<t)
    gradient_checkpointing: bool = False        # recompute each layer in the backward pass (activation memory)
    embedding_grads: bool = False               # keep the raw (T, D) input-embedding gradient and embedding

    def __post_init__(self) -> None:
        if self.saliency not in (None, *reductions.SALIENCY_METHODS):
            raise LeafError(f"Unknown saliency method {self.saliency!r}. Available: "
                            f"{', '.join(reductions.SALIENCY_METHODS)}.")
        if self.norm not in reductions.NORMS:
            raise LeafError(f"Unknown norm {self.norm!r}. Available: {', '.join(reductions.NORMS)}.")
        if (self.query_mask is None) != (self.key_masks is None):
            raise LeafError("Attention mass needs both query_mask and key_masks (from which tokens, onto which).")

    @property
    def needs_grad(self) -> bool:
        return self.saliency is not None or bool(self.grads) or self.embedding_grads

    @property
    def needs_attention(self) -> bool:
        return self.key_masks is not None or self.attention_probs


@dataclass
class SampleResult:
    """What a pass returned for one sample, trimmed to the sample's own T tokens."""

    loss: float | None = None
    saliency: torch.Tensor | None = None                             # (T,) float32
    attention_mass: dict[str, torch.Tensor] = field(default_factory=dict)  # key set -> (L, H) float32
    attention_probs: torch.Tensor | None = None                      # (L, H, T, T)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)   # module -> (T, ...)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)     # module -> (T, ...)
    layers: list[int] = field(default_factory=list)                  # the layer index of each L row
    token_nll: torch.Tensor | None = None                            # (T,) float32, 0 at position 0
    embedding_grad: torch.Tensor | None = None                       # (T, D) float32, d loss / d e
    embedding: torch.Tensor | None = None                            # (T, D) the input embeddings


def _resolve_layers(model: HookedModel, layers: Sequence[int] | None) -> list[int]:
    n = model.arch.num_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise LeafError(f"Layer {layer} does not exist: the model has {n} layers (0..{n - 1}, or -1..-{n}).")
        out.append(layer % n)
    return sorted(set(out))


def _envoy(model: HookedModel, path: str):
    envoy = model.nnsight
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _first_tensor(value):
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


@contextlib.contextmanager
def _prepared(model: HookedModel, eager: bool, checkpointing: bool = False):
    """Freeze weights, eval mode, eager attention if needed, gradient checkpointing if asked; restore all of it
    afterwards.

    transformers checkpoints a decoder layer only when that layer module is in training mode; leaf sets the flag
    on the layer modules alone (not their children), so dropout and attention dropout stay off and the scores
    equal the plain backward's."""
    hf = model.hf_model
    requires = [p.requires_grad for p in hf.parameters()]
    training = hf.training
    impl = getattr(hf.config, "_attn_implementation", None) or "sdpa"
    was_checkpointing = getattr(hf, "is_gradient_checkpointing", False)
    try:
        for p in hf.parameters():
            p.requires_grad_(False)
        hf.eval()
        if eager and impl != "eager":
            hf.set_attn_implementation("eager")
            if (getattr(hf.config, "_attn_implementation", None) or "sdpa") != "eager":
                raise LeafError(f"{type(hf).__name__} cannot switch its attention to eager at run time (transformers "
                                "warns it does not follow the AttentionInterface), so it returns no attention "
                                "weights. Load it with attn_implementation='eager' (leaf.hooks.load_model does so "
                                "for classes it knows cannot switch).")
        if checkpointing:
            if not getattr(hf, "supports_gradient_checkpointing", False):
                raise LeafError(f"{type(hf).__name__} does not support gradient checkpointing in transformers; "
                                "drop --gradient-checkpointing.")
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for module in hf.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.training = True   # the layer's own flag only: its dropout children stay in eval
        yield
    finally:
        if checkpointing:
            if not was_checkpointing:
                hf.gradient_checkpointing_disable()
            for module in hf.modules():
                module.training = False
        if eager and impl != "eager":
            hf.set_attn_implementation(impl)
        for p, flag in zip(hf.parameters(), requires):
            p.requires_grad_(flag)
        hf.train(training)


def _trace_batch(model: HookedModel, batch: TokenBatch, plan: HookPlan, layers: list[int],
                 target: torch.Tensor | None, query: torch.Tensor | None,
                 keys: torch.Tensor | None) -> dict:
    """One forward (+ backward) over a batch; returns batched tensors keyed by what was asked."""
    arch = model.arch
    attention_at = {arch.attention_path(layer): layer for layer in layers} if plan.needs_attention else {}
    embedding = arch.embedding
    wanted = {embedding, *attention_at, *plan.outputs, *plan.grads}
    order = model.execution_order
    missing = [name for name in wanted if name not in order]
    if missing:
        raise LeafError(f"Module(s) {', '.join(missing)} do not run in this model's forward pass (or do not exist). "
                        "Pick names from `[n for n, _ in model.hf_model.named_modules()]`.")
    reads = sorted(wanted, key=order.__getitem__)
    ids = batch.input_ids
    extra = {}
    if plan.loss_fn is None and not plan.token_nll and plan.needs_grad:
        # the built-in NLL needs the logits at the target positions only: the LM head runs on those alone
        positions = reductions.logit_positions(target)
        extra["logits_to_keep"] = positions
        loss_fn = functools.partial(_kept_nll, positions=positions)
    else:
        loss_fn = plan.loss_fn or reductions.mean_nll
    with model.nnsight.trace(input_ids=ids, attention_mask=batch.attention_mask, **extra):
        got = nnsight.save(_intervene(model, plan, reads, attention_at, loss_fn, ids, target, query, keys))
    return got


def _kept_nll(logits: torch.Tensor, ids: torch.Tensor, target: torch.Tensor, *, positions: torch.Tensor):
    return reductions.mean_nll_at(logits, ids, target, positions)


def _intervene(model: HookedModel, plan: HookPlan, reads: list[str], attention_at: dict[str, int],
               loss_fn: LossFn, ids: torch.Tensor, target, query, keys) -> dict:
    """The body of the trace. It is a function, not inline code in the `with` block, on purpose: nnsight runs a
    block against a scope dict that keeps every name bound in it, so an inline layer's (B, H, T, T) map would stay
    alive into the next layer; a function's locals die with each loop iteration."""
    got = {"mass": [], "probs": [], "outputs": {}, "grads": {}}
    tensors = {}  # name -> the module's (first) output tensor, kept for its gradient
    emb = None
    for name in reads:
        out = _envoy(model, name).output
        if name == model.arch.embedding:
            emb = out
            if plan.needs_grad:
                emb.requires_grad_(True)
            if plan.saliency == "grad_x_input" or plan.embedding_grads:
                got["embeds"] = emb.detach()
        if name in attention_at:
            probs = out[1].detach()                            # (B, H, T, T)
            if keys is not None:
                got["mass"].append(reductions.attention_mass(probs, query, keys))   # (B, S, H)
            if plan.attention_probs:
                got["probs"].append(probs)
            del probs
        if name in plan.outputs:
            got["outputs"][name] = _first_tensor(out).detach()
        if name in plan.grads:
            tensors[name] = _first_tensor(out)
        del out
    if plan.token_nll or plan.needs_grad:
        logits = model.nnsight.output.logits                                  # (B, T, V)
    if plan.token_nll:
        got["token_nll"] = reductions.token_nll(logits.detach(), ids)
    if plan.needs_grad:
        losses = loss_fn(logits, ids, target)                                 # (B,)
        got["loss"] = losses.detach()
        with losses.sum().backward():
            for name in reversed(reads):
                if name in plan.grads:
                    got["grads"][name] = tensors[name].grad
            if plan.saliency or plan.embedding_grads:
                got["emb_grad"] = emb.grad
    return got


def run(model: HookedModel, samples: Sequence[Sequence[int] | torch.Tensor], plan: HookPlan, *,
        batch_size: int = 8, progress: bool = False,
        on_batch: Callable[[int], None] | None = None) -> list[SampleResult]:
    """Run `plan` over token-id samples in batches; one SampleResult per sample, in input order. on_batch(n) is
    called after each batch with its number of samples (e.g. to advance a caller's progress bar)."""
    ids = as_id_tensors(samples, model.max_length)
    target = as_masks(plan.target_mask, ids, "target_mask")
    if plan.needs_grad:
        if target is None:
            raise LeafError("Saliency and gradients need target_mask: the tokens whose prediction forms the loss "
                            "(e.g. the response tokens).")
        for i, mask in enumerate(target):
            if mask[0]:
                raise LeafError(f"target_mask of sample {i} marks token 0, which nothing predicts. Targets start at "
                                "token 1.")
            if not mask.any():
                raise LeafError(f"target_mask of sample {i} selects no token, so its loss is undefined. Mark at "
                                "least one token to predict (e.g. the response), or drop the sample.")
    query = as_masks(plan.query_mask, ids, "query_mask")
    key_names = list(plan.key_masks or {})
    keys = {name: as_masks(plan.key_masks[name], ids, f"key_masks[{name!r}]") for name in key_names}
    layers = _resolve_layers(model, plan.layers) if plan.needs_attention else []
    results: list[SampleResult | None] = [None] * len(ids)
    batches = list(iter_batches(ids, batch_size, model.pad_token_id, model.device))
    prepared = _prepared(model, eager=plan.needs_attention, checkpointing=plan.gradient_checkpointing)
    # the per-batch collection below need not walk every object the process already holds (torch, transformers,
    # the models: a full collection took 0.24 s a batch here): they are moved out of the collector's view meanwhile
    gc.freeze()
    with _unfrozen_after(), prepared, Progress(disable=not progress, transient=True,
                                                console=Console(stderr=True)) as bar:
        task = bar.add_task(f"hooks on {model.name}", total=len(ids))
        for batch in batches:
            rows = batch.index
            key_stack = None
            if keys:
                key_stack = torch.stack([batch.pad_masks([keys[n][i] for i in rows]) for n in key_names], 1)
                if plan.exclude_sink:
                    key_stack[:, :, 0] = False
            got = _trace_batch(
                model, batch, plan, layers,
                target=batch.pad_masks([target[i] for i in rows]) if target is not None else None,
                query=batch.pad_masks([query[i] for i in rows]) if query is not None else None,
                keys=key_stack)
            _unbatch(got, batch, plan, layers, key_names, results)
            del got
            gc.collect()  # a trace's graph holds reference cycles: free its activations before the next batch
            bar.advance(task, len(rows))
            if on_batch is not None:
                on_batch(len(rows))
    return results


@contextlib.contextmanager
def _unfrozen_after():
    try:
        yield
    finally:
        gc.unfreeze()


def _unbatch(got: dict, batch: TokenBatch, plan: HookPlan, layers: list[int], key_names: list[str],
             results: list) -> None:
    mass = torch.stack(got["mass"], 1) if got["mass"] else None        # (B, L, S, H)
    probs = torch.stack(got["probs"], 1) if got["probs"] else None     # (B, L, H, T, T)
    scores = None
    if plan.saliency:
        scores = reductions.token_scores(got["emb_grad"], got.get("embeds"), norm=plan.norm, method=plan.saliency)
    for row, (i, n) in enumerate(zip(batch.index, batch.lengths)):
        result = SampleResult(layers=list(layers))
        if "loss" in got:
            result.loss = float(got["loss"][row])
        if scores is not None:
            result.saliency = scores[row, :n].cpu()
        if "token_nll" in got:
            result.token_nll = got["token_nll"][row, :n].cpu()
        if plan.embedding_grads:
            result.embedding_grad = got["emb_grad"][row, :n].float().cpu()
            result.embedding = got["embeds"][row, :n].float().cpu()
        if mass is not None:
            result.attention_mass = {name: mass[row, :, s].cpu() for s, name in enumerate(key_names)}
        if probs is not None:
            result.attention_probs = probs[row, :, :, :n, :n].cpu()
        result.outputs = {name: value[row, :n].cpu() for name, value in got["outputs"].items()}
        result.grads = {name: value[row, :n].float().cpu() for name, value in got["grads"].items()}
        results[i] = result


def token_saliency(model: HookedModel, samples: Sequence[Sequence[int] | torch.Tensor],
                   target_mask: Sequence[MaskLike], *, loss_fn: LossFn | None = None, norm: str = "l2",
                   method: str = "grad", batch_size: int = 8, progress: bool = False) -> list[torch.Tensor]:
    """Per-token gradient sensitivity ||d loss / d e_i|| w.r.t. the input embeddings: one (T,) float32 per sample.

    The loss defaults to the mean NLL of the target tokens; pass loss_fn(logits, input_ids, target_mask) -> (B,)
    for another. method="grad_x_input" scores ||g_i * e_i||. One backward pass per batch; weights get no gradient.
    """
    plan = HookPlan(saliency=method, norm=norm, target_mask=target_mask, loss_fn=loss_fn)
    return [r.saliency for r in run(model, samples, plan, batch_size=batch_size, progress=progress)]


def attention_mass(model: HookedModel, samples: Sequence[Sequence[int] | torch.Tensor],
                   query_mask: Sequence[MaskLike], key_masks: Mapping[str, Sequence[MaskLike]], *,
                   layers: Sequence[int] | None = None, exclude_sink: bool = True, batch_size: int = 8,
                   progress: bool = False) -> list[dict[str, torch.Tensor]]:
    """Attention mass from the query tokens onto each named key set, per layer and head: {name: (L, H)} per sample.

    Reduced on the fly, layer by layer, so no (B, H, T, T) map outlives its layer. With exclude_sink the first
    token (the attention sink) is dropped from every key set.
    """
    plan = HookPlan(query_mask=query_mask, key_masks=key_masks, layers=layers, exclude_sink=exclude_sink)
    return [r.attention_mass for r in run(model, samples, plan, batch_size=batch_size, progress=progress)]


def attention_probs(model: HookedModel, samples: Sequence[Sequence[int] | torch.Tensor], *,
                    layers: Sequence[int] | None = None, batch_size: int = 8) -> list[torch.Tensor]:
    """Full attention probabilities of the chosen layers: one (L, H, T, T) tensor per sample. Memory grows with
    L * T^2: prefer attention_mass for long sequences."""
    plan = HookPlan(attention_probs=True, layers=layers)
    return [r.attention_probs for r in run(model, samples, plan, batch_size=batch_size)]


def capture(model: HookedModel, samples: Sequence[Sequence[int] | torch.Tensor], *, outputs: Sequence[str] = (),
            grads: Sequence[str] = (), target_mask: Sequence[MaskLike] | None = None,
            loss_fn: LossFn | None = None, batch_size: int = 8) -> list[SampleResult]:
    """Any modules' outputs and output gradients by name (e.g. "model.layers.3.mlp"), per sample.

    A module returning a tuple contributes its first tensor. Gradients are of the loss (mean NLL over target_mask
    by default) and need target_mask.
    """
    plan = HookPlan(outputs=tuple(outputs), grads=tuple(grads), target_mask=target_mask, loss_fn=loss_fn)
    return run(model, samples, plan, batch_size=batch_size)
