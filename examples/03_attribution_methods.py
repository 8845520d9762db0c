"""Four attribution methods on one distractor problem: how much of each one's mass falls on the distractor, how
they agree, and integrated gradients' completeness check.

    python examples/03_attribution_methods.py [--model PATH] [--steps 64]
"""

import json

import torch

from _common import load, parser, problems
from leaf.hooks import attribute, attribute_all, counterfactual_pair, describe_methods, heatmap_png, list_methods

p = parser(__doc__.splitlines()[0])
p.add_argument("--steps", type=int, default=64, help="integrated-gradients steps")
args = p.parse_args()
model = load(args)
question, solution, spans = problems(1, args.seed)[0]
pair = counterfactual_pair(model.tokenizer, question, solution, spans)
x = pair.original
print(f"question: {question}\ndistractor: {[question[a:b] for a, b in spans]}\n")
for name, text in describe_methods().items():
    print(f"  {name}: {text}")
scores = attribute_all(model, [x.input_ids], [pair.target], list_methods(),
                       options={"integrated_gradients": {"steps": args.steps}})
prompt, confounder = x.prompt_mask, pair.confounder
print(f"\nshare of |attribution| on the distractor, over the question ({int(confounder.sum())} of "
      f"{int(prompt.sum())} question tokens):")
for name, (values,) in scores.items():
    magnitude = values.abs()
    print(f"  {name:22s} {float(magnitude[confounder].sum() / magnitude[prompt].sum()):.3f}")


def ranks(v):
    return v.argsort().argsort().float()


names = list(scores)
print("\nSpearman correlation over question tokens:")
for i, a in enumerate(names):
    row = [float(torch.corrcoef(torch.stack([ranks(scores[a][0][prompt].abs()), ranks(scores[b][0][prompt].abs())]))[0, 1])
           for b in names]
    print(f"  {a:22s} " + " ".join(f"{v:+.2f}" for v in row))
(ig,), (details,) = attribute(model, [x.input_ids], [pair.target], "integrated_gradients", steps=args.steps,
                              return_details=True)
gap = details["f_input"] - details["f_baseline"]
print(f"\nintegrated gradients: sum {float(ig.sum()):+.5f} vs f(x) - f(baseline) {gap:+.5f} (completeness)")
labels = model.tokenizer.convert_ids_to_tokens(x.input_ids.tolist())
matrix = torch.stack([scores[n][0] / scores[n][0].abs().max().clamp(min=1e-12) for n in names])
args.output.mkdir(parents=True, exist_ok=True)
heatmap_png(matrix, args.output / "attributions.png", signed=True, xlabel="token", ylabel="method",
            xticklabels=labels, yticklabels=names, title="attributions, each row scaled by its largest |value|")
(args.output / "attributions.json").write_text(json.dumps({n: scores[n][0].tolist() for n in names}))
assert abs(float(ig.sum()) - gap) <= 0.05 * abs(gap) + 1e-4
print(f"wrote {args.output}/attributions.png (+ .json)")
