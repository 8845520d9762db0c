"""GPU hours per recipe, estimated from what each stage's compute costs here: CPU figures scaled by FLOPs.

    python benchmarks/gpu_hours.py            # SmolLM2-135M-Instruct on 16 GSM-Plus rows, then every recipe
    python benchmarks/gpu_hours.py --quick    # a tiny Llama, 4 rows (the test suite runs this)

Measured here, on SmolLM2 (P = 135M parameters, the LM head included once), each stage's model FLOPs per second
as a share of this machine's float32 matmul ceiling (benchmarks/teacher_cache.py's `matmul_ceiling`):
- gradient pass (analyze's teacher and student scores): leaf.hooks.token_saliency, forward and backward to the
  input embeddings without weight gradients: 4·P FLOPs per token;
- teacher forward (the teacher cache): leaf.serve.engines HFEngine.top_logprobs: 2·P per token;
- training step (distill from the cache): `leaf distill --mode kd` from a teacher cache, the student's forward,
  backward and AdamW: 6·P per input token.
Each recipe's stages then cost FLOPs(P of its models, its tokens) / (that share x an H100's dense bf16 peak,
989 TFLOP/s), with gradient checkpointing adding a forward (2·P) where the recipe turns it on. These are estimates,
labelled as such, and optimistic: they assume a GPU reaches the same share of its datasheet peak as leaf reaches of
this CPU's measured matmul rate. A 70B-class teacher in analyze is spread over 3 x 80 GB GPUs by device_map, which
compute one at a time, so its hours count 3 GPUs; the cache is taken as written by vLLM with tensor parallelism
(every GPU computes; --teacher-engine vllm). They leave out attention's L² term (about 1 % at 600 tokens for a 70B model) and engine start-up. Token counts: the
recipes' datasets are not here, so a sample is taken as 600 tokens (NuminaMath-CoT and AceCode: ~100 prompt + ~500
response) and 250 for GSM8K (what SmolLM2's tokenizer gives the shipped GSM-Plus rows); instr+resp trains on ~2.5
sequences per sample (the original and its counterfactuals: distill_step.py's input-token ratio).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from transformers.utils import logging as hf_logging

from common import benchmark_parser, emit_json, parse_benchmark_args, print_table
from teacher_cache import matmul_ceiling, sequences

hf_logging.disable_progress_bar()
ROOT = Path(__file__).resolve().parents[1]
GSM_PLUS = ROOT / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"
H100_BF16 = 989e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA's datasheet, without sparsity)
# parameters of the recipes' models (their HF configs; the LM head counted once, as it computes once per token)
PARAMS = {"Qwen/Qwen2.5-72B-Instruct": 72.7e9, "meta-llama/Llama-3.3-70B-Instruct": 70.6e9,
          "Qwen/Qwen2.5-7B-Instruct": 7.6e9, "Qwen/Qwen2.5-Math-1.5B": 1.54e9, "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
          "meta-llama/Llama-3.2-3B-Instruct": 3.21e9, "Qwen/Qwen2.5-0.5B-Instruct": 0.49e9}
TOKENS_PER_SAMPLE = {"numina": 600, "acecode": 600, "gsm8k": 250}
SAMPLES = {"numina_120k": 120_000, "acecode": 87_000}   # the analyze data the paper recipes prepare
DISTILL_GPUS = 8
PIPELINE_GPUS = 3   # 80 GB GPUs per 70B-class teacher copy in analyze (docs/scale.md: 3 x 80 GB with checkpointing)
SEQUENCES = {"kd": 1.0, "instr": 2.0, "instr+resp": 2.5}


def parameters(model) -> int:
    return sum(p.numel() for p in model.hf_model.parameters())


def measure(path: str, rows: int, work: Path) -> dict:
    """Share of the matmul ceiling each stage's model FLOPs reach on `path`."""
    from leaf.distill import DistillConfig, run_distill
    from leaf.hooks import load_model, token_saliency
    from leaf.serve.engines import HFEngine

    prompts, positions = sequences(path, rows)
    tokens = sum(map(len, prompts))
    model = load_model(path)
    p = parameters(model)
    masks = [[t > 0 for t in range(len(ids))] for ids in prompts]
    token_saliency(model, [prompts[0]], [masks[0]])  # warm-up
    start = time.perf_counter()
    token_saliency(model, prompts, masks, batch_size=4)
    gradient = 4 * p * tokens / (time.perf_counter() - start)
    engine = HFEngine(model)
    start = time.perf_counter()
    engine.top_logprobs(prompts, positions, 64)
    forward = 2 * p * tokens / (time.perf_counter() - start)
    del engine, model

    data = work / "data.jsonl"
    data.write_text("".join(GSM_PLUS.read_text().splitlines(keepends=True)[:rows]))
    run_distill(DistillConfig(teacher=path, student=path, data=data, output=work / "distill", mode="kd",
                              prompt_field="question", response_field="solution", cache_teacher=True, max_steps=4,
                              batch_size=4, save_steps=10**6, logging_steps=0, report_to=["none"]), progress=False)
    log = [json.loads(line) for line in (work / "distill" / "log.jsonl").read_text().splitlines()][1:]
    train = statistics.median(6 * p * line["tokens"] / line["step_seconds"] for line in log)
    ceiling = matmul_ceiling()
    return {"parameters": p, "tokens": tokens, "ceiling": ceiling,
            "share": {"gradient": gradient / ceiling, "forward": forward / ceiling, "train": train / ceiling}}


def recipe_hours(recipe: dict, share: dict) -> dict:
    """GPU hours per stage of one recipe from the measured shares."""
    a, d = recipe["analyze"], recipe["distill"]
    teacher, student = PARAMS[a["teacher"]], PARAMS[a["student"]]
    data = Path(a["data"]).stem
    per_sample = next(n for key, n in TOKENS_PER_SAMPLE.items() if key in data)
    samples = SAMPLES[data]
    batch = d.get("batch_size", 4) * d.get("grad_accum", 1) * DISTILL_GPUS  # the recipes' 8 GPUs for distill
    rows = d["max_steps"] * batch if "max_steps" in d else d["num_train_epochs"] * samples   # training rows
    checkpointing = 2 if a.get("gradient_checkpointing") else 0
    cpt = 2 if d.get("gradient_checkpointing") else 0
    seqs = SEQUENCES[d.get("mode", "instr+resp")]
    tokens = samples * per_sample
    trained = rows * per_sample * seqs

    def hours(flops: float, kind: str) -> float:
        return flops / (share[kind] * H100_BF16) / 3600

    # a teacher over several GPUs by device_map computes on one of them at a time: GPU hours count all it holds
    held = PIPELINE_GPUS if teacher > 30e9 else 1
    out = {"teacher_scores": held * hours((4 + checkpointing) * teacher * tokens, "gradient"),
           "student_scores": hours((4 + checkpointing) * student * tokens, "gradient"),
           "teacher_cache": hours(2 * teacher * tokens * seqs, "forward"),
           "distill": hours((6 + cpt) * student * trained, "train")}
    out["distill_kd"] = hours(2 * teacher * tokens, "forward") + hours((6 + cpt) * student * trained / seqs, "train")
    return out


def main() -> None:
    parser = benchmark_parser(__doc__, "a tiny Llama and 4 rows: checks the script, not the figures")
    parser.add_argument("--rows", type=int, default=16)
    args = parse_benchmark_args(parser)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from leaf.models.tiny import build_tiny_model

            path = str(build_tiny_model("llama", Path(tmp) / "model", seed=1))
            measured = measure(path, 4, Path(tmp))
        else:
            from leaf.models.pretrained import smollm2

            measured = measure(str(smollm2()), args.rows, Path(tmp))
    share = measured["share"]
    print_table(f"Measured here ({measured['parameters'] / 1e6:.0f}M parameters, {measured['tokens']} tokens; "
                f"matmul ceiling {measured['ceiling'] / 1e9:.0f} GFLOP/s)", ["stage kind", "share of the ceiling"],
                [[k, f"{v:.0%}"] for k, v in share.items()])
    rows, estimates = [], {}
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        recipe = tomllib.loads(path.read_text())
        guess = recipe["recipe"].get("expected_gpu_hours", {})
        if "teacher_scores" not in guess:  # the budget recipe books analyze as one stage
            continue
        est = recipe_hours(recipe, share)
        estimates[path.stem] = est
        rows.append([path.stem, *(f"{est[k]:.0f} ({guess.get(k, '-')})" for k in
                                  ("teacher_scores", "student_scores", "teacher_cache", "distill", "distill_kd"))])
    print_table("H100 GPU hours per recipe, ESTIMATES from this machine's shares (the recipe's current guess)",
                ["recipe", "teacher scores", "student scores", "teacher cache", "distill", "distill kd"], rows)
    emit_json({"benchmark": "gpu_hours", "measured": measured, "estimates": estimates, "h100_bf16": H100_BF16})


if __name__ == "__main__":
    main()
