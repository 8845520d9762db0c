"""`leaf inspect`: the research maps of chosen samples of a `leaf analyze` folder, as PNG heatmaps and JSON.

    leaf inspect --analyze runs/analyze --output runs/inspect [--model runs/distill/final] [--sample 3 --sample 7]

Per sample (its original X, as analyze rendered it, and the counterfactual X\\A with all its detected instruction
spans removed, rendered under the same template; a model whose tokenizer does not give analyze's text is refused):
    patching_<component>.png/.json          X\\A's activations patched into X: change in the response's mean
                                            log-prob, layer x position (resid, attn, mlp) or layer x head (head)
    patching_<component>_reverse.png/.json  X's activations patched into X\\A
    head_focus.png/.json                    per layer and head, the share of response->instruction attention on
                                            the confounder spans
    attributions.png/.json                  every attribution method's per-token scores on X
and index.json listing them. The model defaults to the analyze run's student.
"""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from leaf.records import AnalysedSample, read_samples
from leaf.errors import LeafError
from leaf.hooks.components import COMPONENTS
from leaf.io import check_output_folder, write_json_atomic
from leaf.options import doc

if TYPE_CHECKING:
    import torch

    from leaf.hooks import CounterfactualPair, HookedModel, PatchingResult
    from leaf.rendering import RecordedTemplate

DEFAULT_COMPONENTS = tuple(COMPONENTS)  # every registered component
DEFAULT_MAX_LAYERS = 8


def default_layers(num_layers: int, most: int = DEFAULT_MAX_LAYERS) -> list[int]:
    """Every layer, or `most` evenly spaced ones with the first and the last."""
    if num_layers <= most:
        return list(range(num_layers))
    return sorted({round(k * (num_layers - 1) / (most - 1)) for k in range(most)})


@dataclass
class InspectConfig:
    analyze: Path = field(metadata=doc("A `leaf analyze` output folder."))
    output: Path = field(metadata=doc("Folder for the PNG heatmaps and JSON (one subfolder per sample)."))
    model: str | None = field(default=None, metadata=doc(
        "Model to inspect (default: the analyze run's student); e.g. the distilled student to compare."))
    samples: list[int] = field(default_factory=list, metadata=doc(
        "Rows of samples.jsonl to inspect (default: the first --count with a detected instruction span)."))
    count: int = field(default=3, metadata=doc("How many samples when --sample is not given."))
    components: list[str] = field(default_factory=lambda: list(DEFAULT_COMPONENTS), metadata=doc(
        "Patching components: resid, attn, mlp, head."))
    methods: list[str] = field(default_factory=list, metadata=doc(
        "Attribution methods (default: all of leaf.hooks.list_methods())."))
    layers: list[int] = field(default_factory=list, metadata=doc(
        "Layers to patch (default: every layer of a model with at most 8, else 8 evenly spaced ones, first and last "
        "included: a 30-layer model's full sweep takes hours on a CPU)."))
    ig_steps: int = field(default=32, metadata=doc("Integrated-gradients steps."))
    batch_size: int = field(default=32, metadata=doc("Patched copies per forward pass."))
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda, cuda:1, ..."))
    dtype: str = field(default="float32", metadata=doc(
        "Model dtype: float32, bfloat16, float16 or auto (the checkpoint's)."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights: only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoint."))

    def __post_init__(self) -> None:
        from leaf.hooks.attribution import get_method

        self.analyze, self.output = Path(self.analyze), Path(self.output)
        check_output_folder(self.output, allow_nonempty=True)
        for component in self.components:
            if component not in COMPONENTS:
                raise LeafError(f"Unknown --component {component!r}: use {', '.join(COMPONENTS)}.")
        from leaf.hooks.attribution import ALIASES

        self.methods = [ALIASES.get(m, m) for m in self.methods]  # leaf's first names read as inseq's ids
        for method in self.methods:
            get_method(method)
        if self.count < 1 or self.ig_steps < 1 or self.batch_size < 1:
            raise LeafError("--count, --ig-steps and --batch-size must be at least 1.")
        from leaf.records import check_finished

        check_finished(self.analyze)


def _short(token: str) -> str:
    token = token.replace("\n", "\\n").replace("Ġ", " ").replace("▁", " ")
    return token if len(token) <= 12 else token[:11] + "…"


def choose_samples(records: list[AnalysedSample], rows: list[int], count: int) -> list[AnalysedSample]:
    by_row = {r.row: r for r in records}
    if rows:
        missing = [r for r in rows if r not in by_row]
        if missing:
            raise LeafError(f"No row {missing[0]} in samples.jsonl (rows 0..{len(records) - 1}).")
        chosen = [by_row[r] for r in rows]
    else:
        chosen = [r for r in records if r.instruction_spans()][:count]
    for record in chosen:
        if not record.instruction_spans():
            raise LeafError(f"Sample {record.row} has no detected instruction span (status {record.status}): "
                            "there is no counterfactual to compare with. Pick another --sample.")
    return chosen


@dataclass
class Loaded:
    """What every sample's maps need: the model (and its name), the chosen records, analyze's rendering (a
    leaf.rendering.RecordedTemplate), the layers to patch and the attribution methods."""

    model: HookedModel
    name: str
    records: list[AnalysedSample]
    template: RecordedTemplate
    layers: list[int]
    methods: list[str]


@dataclass
class SampleMaps:
    """One sample's results: patching per (component, reverse), per-head focus, attributions per method, and the
    token labels of X and X\\A."""

    pair: CounterfactualPair
    patching: dict[tuple[str, bool], PatchingResult]
    focus: torch.Tensor          # (layers, heads) share of response->instruction attention on the confounders
    attributions: dict[str, torch.Tensor]   # method -> (T,) scores on X
    labels: list[str]
    cf_labels: list[str]


def load(config: InspectConfig, log=print) -> Loaded:
    """The records to inspect, the model and analyze's rendering; layers and methods resolved (bad ones refused)."""
    from leaf.hooks import list_methods, load_model
    from leaf.rendering import recorded_template

    records = read_samples(config.analyze)  # validated: rows are non-negative ints (they become folder names)
    summary = json.loads((config.analyze / "summary.json").read_text())
    chosen = choose_samples(records, config.samples, config.count)
    if not chosen:
        raise LeafError(f"No sample of {config.analyze} has a detected instruction span: nothing to inspect.")
    name = config.model or summary["config"]["student"]
    model = load_model(name, device=config.device, dtype=config.dtype, allow_pickle=config.allow_pickle,
                       trust_remote_code=config.trust_remote_code)
    template = recorded_template(summary, trust_remote_code=config.trust_remote_code)  # analyze's rendering
    num_layers = model.arch.num_layers
    bad = [layer for layer in config.layers if not -num_layers <= layer < num_layers]
    if bad:
        raise LeafError(f"--layer {bad[0]} does not exist: {name} has {num_layers} layers (0..{num_layers - 1}).")
    layers = sorted({layer % num_layers for layer in config.layers}) or default_layers(num_layers)
    if len(layers) < num_layers:
        log(f"patching {len(layers)} of {num_layers} layers ({', '.join(map(str, layers))}); --layer N to choose")
    return Loaded(model, name, chosen, template, layers, config.methods or list_methods())


def sample_pair(loaded: Loaded, record: AnalysedSample, what: str) -> CounterfactualPair:
    """X as analyze recorded it (refused when this model's tokenizer renders it otherwise) and X\\A with every
    detected instruction span removed, under the same template: leaf.hooks.counterfactual_pair."""
    from leaf.hooks import counterfactual_pair

    tokenizer = loaded.model.tokenizer
    loaded.template.original(record, tokenizer, what)   # the recorded text is what this tokenizer renders
    renderer = loaded.template.renderer(tokenizer, record.answer_prefix or "")
    return counterfactual_pair(tokenizer, record.prompt, record.response, record.instruction_spans(),
                               render=lambda prompt, response: astuple(renderer.render("student", prompt, response)))


def compute_maps(loaded: Loaded, pair: CounterfactualPair, config: InspectConfig) -> SampleMaps:
    """Patching both ways per component, per-head focus on the confounder spans, and every attribution method."""
    from leaf.hooks import attribute_all, head_focus, patching_sweep

    model, x, xs = loaded.model, pair.original, pair.counterfactual
    patching = {}
    for component in config.components:
        for reverse in (False, True):
            run_ids, src_ids = (xs.input_ids, x.input_ids) if reverse else (x.input_ids, xs.input_ids)
            patching[component, reverse] = patching_sweep(
                model, run_ids, src_ids, pair.alignment.reversed() if reverse else pair.alignment,
                pair.cf_target if reverse else pair.target, component=component, batch_size=config.batch_size,
                layers=loaded.layers, progress=True, source_mask=pair.target if reverse else pair.cf_target)
    [focus] = head_focus(model, [x.input_ids], [x.response_mask], [x.prompt_mask], [pair.confounder])
    scores = attribute_all(model, [x.input_ids], [pair.target], loaded.methods, batch_size=config.batch_size,
                           options={"integrated_gradients": {"steps": config.ig_steps}})
    tokens = model.tokenizer.convert_ids_to_tokens
    return SampleMaps(pair, patching, focus, {m: scores[m][0] for m in loaded.methods},
                      [_short(t) for t in tokens(x.input_ids.tolist())],
                      [_short(t) for t in tokens(xs.input_ids.tolist())])


def _direction(reverse: bool) -> str:
    return "X into X\\A" if reverse else "X\\A into X"


def _stem(component: str, reverse: bool) -> str:
    return f"patching_{component}" + ("_reverse" if reverse else "")


def write_maps(maps: SampleMaps, record: AnalysedSample, folder: Path) -> list[str]:
    """The JSON files of one sample's maps; their names."""
    written = []
    for (component, reverse), result in maps.patching.items():
        payload = {**result.to_json(), "direction": _direction(reverse), "row": record.row,
                   "tokens": maps.cf_labels if reverse else maps.labels}
        write_json_atomic(folder / f"{_stem(component, reverse)}.json", payload)
        written.append(f"{_stem(component, reverse)}.json")
    x, confounder = maps.pair.original, maps.pair.confounder
    write_json_atomic(folder / "head_focus.json", {
        "row": record.row, "share_on_confounders": [[None if v != v else round(float(v), 6) for v in row]
                                                     for row in maps.focus.tolist()],
        "confounder_tokens": int(confounder.sum()), "instruction_tokens": int(x.prompt_mask.sum()),
        "uniform_share": float(confounder.sum() / max(int(x.prompt_mask.sum()), 1))})
    write_json_atomic(folder / "attributions.json", {
        "row": record.row, "tokens": maps.labels, "prompt_tokens": x.prompt_mask.tolist(),
        "confounder_tokens": confounder.tolist(),
        "scores": {m: [round(float(v), 7) for v in values] for m, values in maps.attributions.items()}})
    return written + ["head_focus.json", "attributions.json"]


def plot_maps(maps: SampleMaps, folder: Path) -> list[str]:
    """The PNG heatmaps of one sample's maps; their names."""
    import torch

    from leaf.hooks import heatmap_png

    written = []
    for (component, reverse), result in maps.patching.items():
        columns = ("head", [str(h) for h in range(result.effect.shape[1])]) if COMPONENTS[component].per_head \
            else ("position (token)", maps.cf_labels if reverse else maps.labels)
        heatmap_png(result.effect, folder / f"{_stem(component, reverse)}.png", signed=True,
                    title=f"{component} patching, {_direction(reverse)}: Δ mean log-prob of the response "
                          f"(clean {result.clean:.3f}, source {result.source:.3f})",
                    xlabel=columns[0], ylabel="layer", xticklabels=columns[1],
                    yticklabels=[str(layer) for layer in result.layers], colorbar="Δ log-prob")
        written.append(f"{_stem(component, reverse)}.png")
    heatmap_png(maps.focus, folder / "head_focus.png", signed=False,
                title="share of response→instruction attention on the confounder spans",
                xlabel="head", ylabel="layer", xticklabels=[str(h) for h in range(maps.focus.shape[1])],
                yticklabels=[str(layer) for layer in range(maps.focus.shape[0])], colorbar="share")
    methods = list(maps.attributions)
    rows = torch.stack([maps.attributions[m] for m in methods])
    scaled = rows / rows.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    heatmap_png(scaled, folder / "attributions.png", signed=bool((rows < 0).any()),
                title="attributions on X, each row scaled by its largest |value|", xlabel="token",
                ylabel="method", xticklabels=maps.labels, yticklabels=methods, colorbar="scaled score")
    return written + ["head_focus.png", "attributions.png"]


def run_inspect(config: InspectConfig, *, log=print) -> dict:
    """Load, then per chosen sample: its pair, the maps, their JSON and PNG files; index.json lists them."""
    loaded = load(config, log)
    index = {"model": loaded.name, "analyze": str(config.analyze), "samples": []}
    for record in loaded.records:
        folder = config.output / f"sample-{record.row}"
        maps = compute_maps(loaded, sample_pair(loaded, record, str(config.analyze)), config)
        json_files, png_files = write_maps(maps, record, folder), plot_maps(maps, folder)
        written = [name for pair in zip(json_files, png_files) for name in pair]
        alignment = maps.pair.alignment
        index["samples"].append({"row": record.row, "id": record.id, "folder": str(folder), "files": written,
                                 "pruned_spans": [list(s) for s in record.instruction_spans()],
                                 "unpartnered": {"pruned": len(alignment.pruned), "changed": len(alignment.changed)}})
        log(f"sample {record.row}: wrote {len(written)} files to {folder}")
    index["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    write_json_atomic(config.output / "index.json", index)
    return index
