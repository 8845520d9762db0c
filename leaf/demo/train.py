"""Train the demo's teacher and student from scratch on CPU: next-token loss on the solution tokens only.

The models are ordinary Llama folders (config, safetensors, the word-level tokenizer with its chat template), so
every leaf command, transformers and vLLM load them. A plain AdamW loop with a cosine schedule: small enough to read,
deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from leaf.demo.task import Problem
from leaf.models.tiny import TinySize

TEACHER_SIZE = TinySize(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=512,
                        max_positions=256)
STUDENT_SIZE = TinySize(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=256,
                        max_positions=256)


def new_model(folder: Path, size: TinySize, seed: int) -> Path:
    """A random Llama of `size` with the demo tokenizer, saved as a HF folder (the demo's stage folder: replaced)."""
    from leaf.demo.task import demo_tokenizer
    from leaf.models.tiny import build_tiny_model

    return build_tiny_model("llama", folder, seed=seed, size=size, tokenizer=demo_tokenizer(), overwrite=True)


def encode(tokenizer, problems: list[Problem], *, clean: bool = False) -> list[tuple[list[int], int]]:
    """(token ids, index of the first solution token) of each problem rendered with the chat template."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.clean_question if clean else p.question},
                                            {"role": "assistant", "content": p.solution}], tokenize=False)
             for p in problems]
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    out = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        out.append((ids, ids.index(assistant) + 1))
    return out


def batches(encoded: list[tuple[list[int], int]], batch_size: int, pad: int, seed: int):
    """Endless shuffled batches: (input_ids, attention_mask, labels) with -100 outside the solution."""
    g = torch.Generator().manual_seed(seed)
    while True:
        for _ in range(max(1, len(encoded) // batch_size)):
            rows = [encoded[i] for i in torch.randperm(len(encoded), generator=g)[:batch_size].tolist()]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for r, (row, first) in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
                labels[r, first: len(row)] = torch.tensor(row[first:])
            yield ids, mask, labels


def train(folder: Path, encoded: list[tuple[list[int], int]], *, steps: int, batch_size: int = 64, lr: float = 2e-3,
          seed: int = 0, warmup: int = 50, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the model in `folder` in place; returns {steps, seconds, final_loss}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    stream = batches(encoded, batch_size, tokenizer.pad_token_id, seed)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        ids, mask, labels = next(stream)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, losses[-1])
    model.save_pretrained(folder, safe_serialization=True)
    record = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "seconds": time.perf_counter() - start, "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    (folder / "leaf_demo_training.json").write_text(json.dumps(record, indent=2))
    return record


def evaluate(folder: Path, problems: list[Problem], *, clean: bool = False, batch_size: int = 128,
             max_new_tokens: int = 48) -> list[bool]:
    """Greedy answers of the model in `folder`, checked against each problem's answer (HF generate)."""
    from leaf.answers import is_correct
    from leaf.hooks import load_model
    from leaf.hooks.templates import render_head
    from leaf.serve.engines import HFEngine, generate_texts

    model = load_model(str(folder))
    texts = [render_head(model.tokenizer, p.clean_question if clean else p.question) for p in problems]
    outputs = generate_texts(HFEngine(model, batch_size=batch_size), texts, max_new_tokens=max_new_tokens)
    return [is_correct(o, p.answer) for o, p in zip(outputs, problems)]

