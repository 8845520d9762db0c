"""Activation patching between an input and its counterfactual, on nnsight, batched.

Run the *source* (e.g. the counterfactual X\\A) once and keep a component's activations; then run the *target*
(the original X) with one component at one place replaced by the source's, and measure the change in the mean
log-probability of the target's response tokens. The sweep puts many patched copies of the target in one batch,
each copy patching a different (layer, position) or (layer, head), so a full layer x position map costs
ceil(L x P / batch_size) forwards instead of L x P.

Components (one sweep, one kind):
    resid  the decoder block's output (the residual stream after the layer), per (layer, position)
    attn   the attention module's output, per (layer, position)
    mlp    the MLP's output, per (layer, position)
    head   one attention head's output (its slice of the output projection's input), per (layer, head), at every
           aligned position at once
Positions are matched through an Alignment (leaf.hooks.alignment): target positions without a partner in the
source (inside a pruned span, or retokenized at a cut) are never patched and show as NaN in the map.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nnsight
import torch

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from leaf.errors import LeafError
from leaf.hooks import reductions
from leaf.hooks.alignment import Alignment
from leaf.hooks.loading import HookedModel
from leaf.hooks.batching import as_masks
from leaf.hooks.components import COMPONENTS, get_component
from leaf.hooks.tracing import _envoy, _first_tensor, _prepared, _resolve_layers

Metric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def response_logprob(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """The default metric: mean log-probability of the target tokens, (B, T, V) -> (B,) float32."""
    return -reductions.mean_nll(logits, input_ids, target_mask)


@dataclass
class PatchingResult:
    """effect[l, c]: metric(patched) - metric(clean) for layer layers[l] and column c (a target position, or a head);
    NaN where nothing was patched (no partner)."""

    component: str
    effect: torch.Tensor
    layers: list[int]
    columns: str                    # "position" or "head"
    clean: float                    # the target's metric, unpatched
    source: float                   # the source's metric on its own tokens
    alignment: Alignment | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"component": self.component, "columns": self.columns, "layers": self.layers,
                "clean": self.clean, "source": self.source,
                "effect": [[None if v != v else round(float(v), 6) for v in row] for row in self.effect.tolist()],
                "alignment": self.alignment.to_json() if self.alignment else None, "notes": self.notes}


def _ids(x) -> torch.Tensor:
    ids = torch.as_tensor(x, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise LeafError("Patching needs token-id sequences of at least 2 tokens.")
    return ids


def _component_tensor(envoy, component: str):
    """The tensor a component patch reads or writes: the module's (first) output, or for heads the output
    projection's input."""
    return envoy.input if COMPONENTS[component].per_head else _first_tensor(envoy.output)


def _read(model: HookedModel, component: str, layers: list[int], ids: torch.Tensor, metric: Metric,
          mask: torch.Tensor) -> dict:
    paths = [model.arch.component_path(component, layer) for layer in layers]

    got = {"acts": []}
    for path in paths:
        got["acts"].append(_component_tensor(_envoy(model, path), component).detach().clone())
    got["metric"] = metric(model.nnsight.output.logits, ids, mask)
    return got


def _croppable(cache) -> bool:
    """Whether the clean run's cache can be cut to a prefix: transformers' sliding-window layers refuse once the
    sequence reaches the window, so any sliding layer turns prefix reuse off."""
    if not getattr(cache, "is_croppable", True):
        return False
    return not any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", []))


def _clean(model: HookedModel, metric: Metric, ids: torch.Tensor, mask: torch.Tensor, keep_cache: bool) -> dict:
    output = model.nnsight.output
    got = {"metric": metric(output.logits, ids, mask)}
    if keep_cache:
        got["cache"] = output.past_key_values
    return got


def _patch(model: HookedModel, component: str, plan: list[tuple[int, list]], source: dict[int, torch.Tensor],
           ids: torch.Tensor, metric: Metric, mask: torch.Tensor, head_dim: int, keep_logits: bool = False):
    """One batch: plan[k] = (layer, [(row, target positions, source positions, head or None), ...])."""

    for layer, edits in plan:
        tensor = _component_tensor(_envoy(model, model.arch.component_path(component, layer)), component)
        src = source[layer]
        for row, positions, source_positions, head in edits:
            if head is None:
                tensor[row, positions] = src[source_positions]
            else:
                cols = slice(head * head_dim, (head + 1) * head_dim)
                tensor[row, positions, cols] = src[source_positions, cols]
    logits = model.nnsight.output.logits
    values = metric(logits, ids, mask)
    return {"metric": values, "logits": logits.detach()} if keep_logits else values


def _source_acts(model: HookedModel, component: str, layers: list[int], source: torch.Tensor, metric: Metric,
                 source_mask: torch.Tensor | None) -> tuple[dict[int, torch.Tensor], float, int]:
    """The source's component activations per layer, its metric (NaN without a mask) and the head width."""
    mask = source_mask if source_mask is not None else torch.zeros_like(source, dtype=torch.bool)
    with model.nnsight.trace(input_ids=source[None]):
        read = nnsight.save(_read(model, component, layers, source[None], metric, mask[None]))
    acts = {layer: a[0] for layer, a in zip(layers, read["acts"])}
    head_dim = 0
    if COMPONENTS[component].per_head:
        width = acts[layers[0]].shape[-1]
        if width % model.arch.num_heads:
            raise LeafError(f"The output projection's input has width {width}, not a multiple of the "
                            f"{model.arch.num_heads} heads: per-head patching does not apply to this architecture.")
        head_dim = width // model.arch.num_heads
    value = float(read["metric"][0]) if source_mask is not None else float("nan")
    return acts, value, head_dim


def _prepare(model, target, source, alignment, target_mask, component, layers, source_mask):
    get_component(component)  # a clear error for an unknown name
    target, source = _ids(target), _ids(source)
    [mask] = as_masks([target_mask], [target], "target_mask")
    if not mask[1:].any():
        raise LeafError("target_mask selects no token after position 0, so the metric is undefined.")
    pairs = [(p, q) for p, q in alignment.pairs if 0 <= p < len(target) and 0 <= q < len(source)]
    if len(pairs) != len(alignment.pairs):
        raise LeafError("The alignment refers to positions outside the target or source sequence.")
    src_mask = None
    if source_mask is not None:
        [src_mask] = as_masks([source_mask], [source], "source_mask")
        src_mask = src_mask.to(model.device)
    device = model.device
    return target.to(device), source.to(device), mask.to(device), pairs, _resolve_layers(model, layers), src_mask


@dataclass
class PatchedRun:
    """One run of the target with every chosen site patched at once."""

    logits: torch.Tensor     # (T, V)
    metric: float
    clean: float


def patch_all(model: HookedModel, target, source, alignment: Alignment, target_mask, *, component: str = "resid",
              layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
              metric: Metric | None = None) -> PatchedRun:
    """Patch the source's activations into the target at every aligned position of every chosen layer (and, for
    component head, every chosen head) in one run; its logits and metric."""
    metric = metric or response_logprob
    target, source, mask, pairs, layers, _ = _prepare(model, target, source, alignment, target_mask, component,
                                                      layers, None)
    device = model.device
    tp, sp = torch.tensor([p for p, _ in pairs], device=device), torch.tensor([q for _, q in pairs], device=device)
    with _prepared(model, eager=False), torch.no_grad():
        acts, _, head_dim = _source_acts(model, component, layers, source, metric, None)
        head_list = (list(range(model.arch.num_heads)) if heads is None else sorted(set(heads))) \
            if COMPONENTS[component].per_head else [None]
        plan = [(layer, [(0, tp, sp, h) for h in head_list]) for layer in layers]
        with model.nnsight.trace(input_ids=target[None]):
            clean = nnsight.save(metric(model.nnsight.output.logits, target[None], mask[None]))
        with model.nnsight.trace(input_ids=target[None]):
            got = nnsight.save(_patch(model, component, plan, acts, target[None], metric, mask[None], head_dim,
                                      keep_logits=True))
    return PatchedRun(logits=got["logits"][0].float().cpu(), metric=float(got["metric"][0]), clean=float(clean[0]))


def patching_sweep(model: HookedModel, target, source, alignment: Alignment, target_mask, *,
                   component: str = "resid", layers: Sequence[int] | None = None,
                   positions: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                   batch_size: int = 32, metric: Metric | None = None, source_mask=None,
                   reuse_prefix: bool = True, progress: bool = False) -> PatchingResult:
    """Patch `source`'s activations into the `target` run, one (layer, position) or (layer, head) at a time.

    target, source: token ids (T_t,), (T_s,). alignment.pairs: (target position, source position). target_mask:
    (T_t,) bool, the tokens whose mean log-probability is the metric (e.g. the response; token 0 is never a
    target). positions: restrict the columns (default: every target position). batch_size: patched copies per
    forward (1 gives the naive loop). metric(logits, ids, mask) -> (B,) replaces the default mean log-prob.
    source_mask: the source's own target tokens, for the reported source metric (default: none reported).
    reuse_prefix: for position components with the default metric, each batch runs only the positions from its
    first patched one on, on top of the clean run's KV cache (a patch at position p changes nothing before p in
    a causal model); the numbers are those of full runs. progress: a progress bar over the patched runs (stderr).
    """
    if batch_size < 1:
        raise LeafError("batch_size must be at least 1.")
    custom_metric = metric
    metric = metric or response_logprob
    target, source, mask, pairs, layers, src_mask = _prepare(model, target, source, alignment, target_mask,
                                                             component, layers, source_mask)
    if positions is not None:
        keep = set(positions)
        pairs = [(p, q) for p, q in pairs if p in keep]
    device = model.device
    with _prepared(model, eager=False), torch.no_grad():
        acts, source_value, head_dim = _source_acts(model, component, layers, source, metric, src_mask)
        reuse = reuse_prefix and custom_metric is None and component != "head"
        with model.nnsight.trace(input_ids=target[None], use_cache=reuse):
            clean = nnsight.save(_clean(model, metric, target[None], mask[None], reuse))
        cache = clean.get("cache") if reuse else None
        if cache is not None and not _croppable(cache):
            cache = None  # no KV cache, or one that cannot be cut (sliding windows): full sequences
        first_target = int(mask[1:].nonzero()[0]) + 1   # the metric never reads token 0
        if COMPONENTS[component].per_head:
            head_list = list(range(model.arch.num_heads)) if heads is None else sorted(set(heads))
            tp = [p for p, _ in pairs]
            sp = [q for _, q in pairs]
            jobs = [(layer, c, tp, sp, h) for layer in layers for c, h in enumerate(head_list)]
            effect = torch.full((len(layers), len(head_list)), float("nan"))
        else:  # sorted by position: a chunk's rows share the clean prefix before its first patched position
            jobs = sorted(((layer, p, [p], [q], None) for layer in layers for p, q in pairs),
                          key=lambda job: (job[1], job[0]))
            effect = torch.full((len(layers), len(target)), float("nan"))
        row_of = {layer: k for k, layer in enumerate(layers)}
        bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), disable=not progress, transient=True,
                       console=Console(stderr=True))
        task = bar.add_task(f"patching {component}: {len(layers)} layers", total=len(jobs))
        with bar:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start: start + batch_size]
                # with a KV cache, positions before the first patched one (and before the first target's predictor)
                # are the clean run's: run only the suffix on top of the cached prefix
                skip = min(min(job[2][0] for job in chunk), first_target - 1) if cache is not None else 0
                plan: dict[int, list] = {}
                for row, (layer, _, tp, sp, h) in enumerate(chunk):
                    plan.setdefault(layer, []).append((row, torch.tensor(tp, device=device) - skip,
                                                       torch.tensor(sp, device=device), h))
                ids = target[None, skip:].expand(len(chunk), -1)
                kwargs = {}
                if skip:
                    prefix = copy.deepcopy(cache)
                    prefix.crop(skip - len(target))          # keep the first `skip` positions
                    prefix.batch_repeat_interleave(len(chunk))
                    kwargs = {"past_key_values": prefix, "use_cache": True}
                with model.nnsight.trace(input_ids=ids, **kwargs):
                    values = nnsight.save(_patch(model, component, sorted(plan.items()), acts, ids, metric,
                                                 mask[None, skip:].expand(len(chunk), -1), head_dim))
                for row, (layer, column, *_rest) in enumerate(chunk):
                    effect[row_of[layer], column] = float(values[row]) - float(clean["metric"][0])
                bar.advance(task, len(chunk))
    notes = []
    if alignment.pruned or alignment.changed:
        notes.append(f"{len(alignment.pruned)} target position(s) inside pruned spans and {len(alignment.changed)} "
                     "retokenized at a cut have no partner: not patched (NaN)")
    return PatchingResult(component=component, effect=effect, layers=layers,
                          columns="head" if COMPONENTS[component].per_head else "position",
                          clean=float(clean["metric"][0]), source=source_value, alignment=alignment, notes=notes)
