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

from leaf.records import AnalysedSample, read_samples
from leaf.errors import LeafError
from leaf.io import check_output_folder, write_json_atomic
from leaf.options import doc

DEFAULT_COMPONENTS = ("resid", "attn", "mlp", "head")
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
        from leaf.hooks.patching import COMPONENTS

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


def run_inspect(config: InspectConfig, *, log=print) -> dict:
    import torch

    from leaf.hooks import (align_tokens, attribute_all, encode_text, head_focus, heatmap_png, list_methods,
                            load_model, patching_sweep)
    from leaf.rendering import recorded_template
    from leaf.gold import token_gold

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
    methods = config.methods or list_methods()
    index = {"model": name, "analyze": str(config.analyze), "samples": []}
    for record in chosen:
        folder = config.output / f"sample-{record.row}"
        spans = record.instruction_spans()
        text, pspan, rspan = astuple(template.original(record, model.tokenizer, str(config.analyze)))
        cf_text, cf_pspan, cf_rspan = astuple(template.renderer(model.tokenizer, record.answer_prefix or "").render(
            "student", record.pruned_prompt(), record.response))
        x, xs = encode_text(model.tokenizer, text, pspan, rspan), encode_text(model.tokenizer, cf_text, cf_pspan,
                                                                             cf_rspan)
        pruned = [(pspan[0] + a, pspan[0] + b) for a, b in spans]
        alignment = align_tokens(text, x.offsets, cf_text, xs.offsets, pruned)
        target, cf_target = x.response_mask.clone(), xs.response_mask.clone()
        target[0] = cf_target[0] = False
        labels = [_short(t) for t in model.tokenizer.convert_ids_to_tokens(x.input_ids.tolist())]
        cf_labels = [_short(t) for t in model.tokenizer.convert_ids_to_tokens(xs.input_ids.tolist())]
        written = []
        for component in config.components:
            for reverse in (False, True):
                run_ids, src_ids = (xs.input_ids, x.input_ids) if reverse else (x.input_ids, xs.input_ids)
                result = patching_sweep(model, run_ids, src_ids, alignment.reversed() if reverse else alignment,
                                        cf_target if reverse else target, component=component,
                                        batch_size=config.batch_size, layers=layers, progress=True,
                                        source_mask=target if reverse else cf_target)
                stem = f"patching_{component}" + ("_reverse" if reverse else "")
                into = "X into X\\A" if reverse else "X\\A into X"
                payload = {**result.to_json(), "direction": into, "row": record.row,
                           "tokens": cf_labels if reverse else labels}
                write_json_atomic(folder / f"{stem}.json", payload)
                columns = ("head", [str(h) for h in range(result.effect.shape[1])]) if component == "head" else (
                    "position (token)", cf_labels if reverse else labels)
                heatmap_png(result.effect, folder / f"{stem}.png", signed=True,
                            title=f"{component} patching, {into}: Δ mean log-prob of the response "
                                  f"(clean {result.clean:.3f}, source {result.source:.3f})",
                            xlabel=columns[0], ylabel="layer", xticklabels=columns[1],
                            yticklabels=[str(layer) for layer in result.layers], colorbar="Δ log-prob")
                written += [f"{stem}.json", f"{stem}.png"]
        confounder = token_gold(x.offsets, spans, base=pspan[0]) & x.prompt_mask   # tokens overlapping a span
        [focus] = head_focus(model, [x.input_ids], [x.response_mask], [x.prompt_mask], [confounder])
        write_json_atomic(folder / "head_focus.json", {
            "row": record.row, "share_on_confounders": [[None if v != v else round(float(v), 6) for v in row]
                                                         for row in focus.tolist()],
            "confounder_tokens": int(confounder.sum()), "instruction_tokens": int(x.prompt_mask.sum()),
            "uniform_share": float(confounder.sum() / max(int(x.prompt_mask.sum()), 1))})
        heatmap_png(focus, folder / "head_focus.png", signed=False,
                    title="share of response→instruction attention on the confounder spans",
                    xlabel="head", ylabel="layer", xticklabels=[str(h) for h in range(focus.shape[1])],
                    yticklabels=[str(layer) for layer in range(focus.shape[0])], colorbar="share")
        scores = attribute_all(model, [x.input_ids], [target], methods, batch_size=config.batch_size,
                               options={"integrated_gradients": {"steps": config.ig_steps}})
        rows = torch.stack([scores[m][0] for m in methods])
        scaled = rows / rows.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        write_json_atomic(folder / "attributions.json", {
            "row": record.row, "tokens": labels, "prompt_tokens": x.prompt_mask.tolist(),
            "confounder_tokens": confounder.tolist(),
            "scores": {m: [round(float(v), 7) for v in scores[m][0]] for m in methods}})
        heatmap_png(scaled, folder / "attributions.png", signed=bool((rows < 0).any()),
                    title="attributions on X, each row scaled by its largest |value|", xlabel="token",
                    ylabel="method", xticklabels=labels, yticklabels=methods, colorbar="scaled score")
        written += ["head_focus.json", "head_focus.png", "attributions.json", "attributions.png"]
        index["samples"].append({"row": record.row, "id": record.id, "folder": str(folder),
                                 "files": written, "pruned_spans": [list(s) for s in spans],
                                 "unpartnered": {"pruned": len(alignment.pruned), "changed": len(alignment.changed)}})
        log(f"sample {record.row}: wrote {len(written)} files to {folder}")
    index["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    write_json_atomic(config.output / "index.json", index)
    return index
