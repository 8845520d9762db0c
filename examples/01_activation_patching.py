"""Where does a distractor act? Patch the clean run's activations into the distracted run, layer by layer and
position by position (and head by head), and see which patches move the answer's log-probability.

    python examples/01_activation_patching.py [--model PATH] [--output example-output]
"""

import json

import torch

from _common import load, parser, problems
from leaf.hooks import counterfactual_pair, heatmap_png, patching_sweep

args = parser(__doc__.splitlines()[0]).parse_args()
model = load(args)
question, solution, spans = problems(1, args.seed)[0]
pair = counterfactual_pair(model.tokenizer, question, solution, spans)
x, xs, alignment = pair.original, pair.counterfactual, pair.alignment
labels = model.tokenizer.convert_ids_to_tokens(x.input_ids.tolist())
print(f"question: {question}\ndistractor: {[question[a:b] for a, b in spans]}")
print(f"{len(alignment.pairs)} aligned positions; {len(alignment.pruned)} inside the distractor (never patched)")
args.output.mkdir(parents=True, exist_ok=True)
for component in ("resid", "head"):
    result = patching_sweep(model, x.input_ids, xs.input_ids, alignment, pair.target, component=component,
                            source_mask=pair.cf_target, batch_size=64)
    print(f"\n{component}: response log-prob {result.clean:.3f} distracted, {result.source:.3f} clean")
    flat = result.effect.nan_to_num(0).flatten()
    for index in flat.abs().argsort(descending=True)[:5].tolist():
        layer, column = divmod(index, result.effect.shape[1])
        where = f"head {column}" if component == "head" else f"position {column} {labels[column]!r}"
        print(f"  layer {result.layers[layer]} {where}: {float(flat[index]):+.4f}")
    heatmap_png(result.effect, args.output / f"patching_{component}.png", signed=True,
                title=f"{component}: clean activations patched into the distracted run", ylabel="layer",
                xlabel="head" if component == "head" else "position",
                xticklabels=None if component == "head" else labels)
    (args.output / f"patching_{component}.json").write_text(json.dumps(result.to_json()))
assert torch.isnan(result.effect).sum() == 0  # every head is patched at every aligned position
print(f"\nwrote {args.output}/patching_resid.png, patching_head.png (+ .json)")
