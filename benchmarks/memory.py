"""Peak memory of one `leaf analyze` batch and one `leaf distill` step on a real model, against plain-PyTorch floors.

    python benchmarks/memory.py                      # SmolLM2-135M-Instruct (leaf.models.pretrained), first 8 GSM-Plus rows
    python benchmarks/memory.py --model PATH --batch-size 4

Every measurement runs in a process of its own (peak resident memory is per process) on the same rendered batch:

- imports:       python + torch + transformers + nnsight + leaf imported, no model: the fixed cost in every row
- floor analyze: teacher and student weights + per model one forward with the LM head at the response positions only
                 (logits_to_keep) and one backward to the input embeddings: the least gradient saliency needs
- floor analyze, full logits: the same with the (B, T, V) logits of every position (what a naive loss does)
- leaf analyze:  `leaf analyze` (run_analyze, defaults) on the same rows as one batch: both models, nnsight traces,
                 detection, pruning, every output file
- floor distill: teacher and student weights, AdamW state, one step of forward KL at the response positions
- leaf distill:  `leaf distill --mode kd --max-steps 1` on the same batch (Trainer, data, checkpoint-free)

Peak RSS varies by a few hundred MB from run to run (allocator arenas, thread pools), so each row runs --repeats times
(default 3) and the median is used. It prints peak RSS per row (median, min, max) and the ratios leaf / floor
(target <= 1.5), both raw and above the imports row, as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def batch(model_path: str, rows: int):
    """The first `rows` GSM-Plus rows rendered with the model's chat template."""
    from transformers import AutoTokenizer

    from common import pad_encodings

    from leaf.hooks import encode_prompt_response

    tok = AutoTokenizer.from_pretrained(model_path)
    records = [json.loads(line) for line in DATA.read_text().splitlines()[:rows]]
    encs = [encode_prompt_response(tok, r["question"], r["solution"]) for r in records]
    ids, mask, target = pad_encodings(encs, tok.pad_token_id or 0)
    return records, encs, ids, mask, target


def child(kind: str, model_path: str, rows: int, workdir: str) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    import leaf.hooks  # noqa: F401  (the same imports in every row)

    torch.manual_seed(0)
    records, encs, ids, mask, target = batch(model_path, rows)
    if kind == "imports":
        return {"peak_mb": peak_mb()}
    if kind.startswith("floor analyze"):
        # both models resident (analyze holds teacher and student), one saliency pass each, one after the other
        full = kind.endswith("full logits")
        models = [AutoModelForCausalLM.from_pretrained(model_path).eval() for _ in range(2)]
        losses = []
        for model in models:
            for p in model.parameters():
                p.requires_grad_(False)
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            predictors = target[:, 1:].any(0).nonzero().flatten()           # logit t predicts token t + 1
            logits = model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=0 if full else predictors).logits
            if full:
                logits = logits[:, predictors]
            chosen = target[:, predictors + 1]
            loss = F.cross_entropy(logits[chosen].float(), ids[:, predictors + 1][chosen])
            loss.backward()
            losses.append(float(loss))
            del logits, loss, embeds
        return {"peak_mb": peak_mb(), "loss": losses[0]}
    if kind == "leaf analyze":
        from leaf.analyze import AnalyzeConfig, run_analyze

        data = Path(workdir) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        run_analyze(AnalyzeConfig(teacher=model_path, student=model_path, data=data, output=Path(workdir) / "out",
                                  batch_size=rows), progress=False)
        return {"peak_mb": peak_mb()}
    if kind == "floor distill":
        teacher = AutoModelForCausalLM.from_pretrained(model_path).eval()
        student = AutoModelForCausalLM.from_pretrained(model_path)
        for p in teacher.parameters():
            p.requires_grad_(False)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
        predictors = target[:, 1:].any(0).nonzero().flatten()
        chosen = target[:, predictors + 1]
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=mask, logits_to_keep=predictors).logits[chosen].float()
        s = student(input_ids=ids, attention_mask=mask, logits_to_keep=predictors).logits[chosen].float()
        loss = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
        loss.backward()
        optimizer.step()
        return {"peak_mb": peak_mb(), "loss": float(loss)}
    if kind == "leaf distill":
        from leaf.distill import DistillConfig, run_distill

        data = Path(workdir) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        run_distill(DistillConfig(teacher=model_path, student=model_path, data=data, output=Path(workdir) / "out",
                                  mode="kd", lam="1.0", max_steps=1, batch_size=rows, save_steps=10**6),
                    progress=False)
        return {"peak_mb": peak_mb()}
    raise ValueError(kind)


KINDS = ("imports", "floor analyze", "floor analyze, full logits", "leaf analyze", "floor distill", "leaf distill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder (default: SmolLM2-135M-Instruct, leaf.models.pretrained)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per row; the median peak is used.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch_size, args.workdir)))
        return
    if args.model is None:
        from leaf.models.pretrained import smollm2

        args.model = str(smollm2())
    rows, spread = {}, {}
    for kind in KINDS:
        peaks = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as workdir:
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--model", args.model,
                                      "--batch-size", str(args.batch_size), "--workdir", workdir],
                                     capture_output=True, text=True, check=True)
            peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
        rows[kind] = {"peak_mb": statistics.median(peaks)}
        spread[kind] = [round(min(peaks)), round(max(peaks))]
        print(f"{kind:<28} peak {rows[kind]['peak_mb']:8.0f} MB (min {min(peaks):.0f}, max {max(peaks):.0f})",
              file=sys.stderr)
    base = rows["imports"]["peak_mb"]

    def ratio(a: str, b: str) -> dict:
        x, y = rows[a]["peak_mb"], rows[b]["peak_mb"]
        return {"raw": round(x / y, 3), "above_imports": round((x - base) / max(y - base, 1e-9), 3)}

    print(json.dumps({"model": args.model, "batch_size": args.batch_size,
                      "peak_mb": {k: round(v["peak_mb"]) for k, v in rows.items()}, "min_max_mb": spread,
                      "repeats": args.repeats,
                      "analyze_vs_floor": ratio("leaf analyze", "floor analyze"),
                      "full_logits_vs_floor": ratio("floor analyze, full logits", "floor analyze"),
                      "distill_vs_floor": ratio("leaf distill", "floor distill"), "target": 1.5}, indent=2))


if __name__ == "__main__":
    main()
