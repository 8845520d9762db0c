"""Which heads read the distractor? Per layer and head, the share of the response's attention on the instruction
that lands on the distractor, for two models (e.g. a student before and after `leaf distill`).

    python examples/02_head_focus.py --before runs/student --after runs/distill/final
Without --before/--after: a randomly initialised model of the demo's shape ("before") against the trained demo
teacher ("after"), a stand-in for a student before and after distillation.
"""

import json
import tempfile
from pathlib import Path

import torch

from _common import parser, problems
from leaf.hooks import counterfactual_pair, head_focus, heatmap_png, load_model, mean_focus

p = parser(__doc__.splitlines()[0])
p.add_argument("--before", default=None)
p.add_argument("--after", default=None)
args = p.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    before_path = args.before
    if before_path is None:  # an untrained model of the demo teacher's shape and tokenizer
        from leaf.demo.train import TEACHER_SIZE, new_model

        before_path = str(new_model(Path(tmp) / "untrained", TEACHER_SIZE, seed=0))
    models = {"before": load_model(before_path, device=args.device),
              "after": load_model(args.after or args.model, device=args.device)}
    maps, uniform = {}, []
    for name, model in models.items():
        pairs = [counterfactual_pair(model.tokenizer, q, s, spans)
                 for q, s, spans in problems(args.problems, args.seed)]
        per_sample = head_focus(model, [pr.original.input_ids for pr in pairs],
                                [pr.original.response_mask for pr in pairs],
                                [pr.original.prompt_mask for pr in pairs], [pr.confounder for pr in pairs])
        maps[name] = mean_focus(per_sample)
        uniform = [float(pr.confounder.sum() / pr.original.prompt_mask.sum()) for pr in pairs]
args.output.mkdir(parents=True, exist_ok=True)
change = maps["after"] - maps["before"]
print(f"share of instruction attention on the distractor (uniform attention would give {sum(uniform) / len(uniform):.3f})")
for name, focus in maps.items():
    print(f"  {name}: mean {float(focus.nanmean()):.3f}, max {float(focus.nan_to_num(0).max()):.3f}")
order = change.nan_to_num(0).flatten().argsort()
print("heads that read the distractor less after:")
for index in order[:3].tolist():
    layer, head = divmod(index, change.shape[1])
    print(f"  layer {layer} head {head}: {float(maps['before'][layer, head]):.3f} -> {float(maps['after'][layer, head]):.3f}")
for name, matrix in {**maps, "change": change}.items():
    heatmap_png(matrix, args.output / f"head_focus_{name}.png", signed=name == "change", xlabel="head",
                ylabel="layer", title=f"share of response→instruction attention on the distractor: {name}")
(args.output / "head_focus.json").write_text(json.dumps({k: v.tolist() for k, v in maps.items()}))
assert change.shape == maps["before"].shape and torch.isfinite(change).all()
print(f"wrote {args.output}/head_focus_before.png, head_focus_after.png, head_focus_change.png")
