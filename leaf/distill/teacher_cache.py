"""The teacher cache of `leaf distill --cache-teacher`: the teacher's top-k log-probs of every original and
counterfactual, written once (split by shard across processes), then read lazily while the student trains without
the teacher in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from leaf.errors import LeafError
from leaf.io import write_json_atomic

if TYPE_CHECKING:
    from leaf.distill.config import DistillConfig
    from leaf.distill.data import Example

SHARD = 256  # examples per teacher-cache shard


class TeacherCache:
    """Top-k teacher log-probs per (example, variant): variant 0 is the original, 1 + j its counterfactual j.
    Stored as safetensors shards of SHARD examples under OUTPUT/teacher_cache, read lazily (memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.handles = folder, {}

    def get(self, index: int, variant: int):
        from safetensors import safe_open

        shard = index // SHARD
        if shard not in self.handles:
            self.handles[shard] = safe_open(str(self.folder / f"shard-{shard:05d}.safetensors"), "pt")
        handle = self.handles[shard]
        return handle.get_tensor(f"{index}.{variant}.logp"), handle.get_tensor(f"{index}.{variant}.ids").long()

    def batch(self, keys: list[tuple[int, int]]):
        """(N, k) log-probs and ids of the selected positions of several rows, in row-major order."""
        import torch

        pairs = [self.get(i, v) for i, v in keys]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    @staticmethod
    def meta(config: DistillConfig, examples: list[Example], fingerprint: dict, vocab: int) -> dict:
        return {"k": config.top_k, "temperature": config.temperature, "vocab": vocab, "examples": len(examples),
                "data": fingerprint, "engine": config.teacher_engine}

    @staticmethod
    def complete(folder: Path, meta: dict) -> bool:
        """Whether the folder holds a finished cache of exactly this data and these settings (written by either
        engine: both store the same quantity, so a run trains from whichever wrote it)."""
        path = folder / "meta.json"
        if not path.exists():
            return False
        if _without_engine(json.loads(path.read_text())) != _without_engine(meta):
            raise LeafError(f"{folder} holds a teacher cache for other data or settings; delete it or use "
                            "another --output.")
        return True

    @staticmethod
    def write(folder: Path, engine, examples: list[Example], config: DistillConfig, vocab: int, *, rank: int = 0,
              processes: int = 1, progress: bool = False) -> None:
        """Score every original and counterfactual with the teacher `engine` (leaf.serve.engines: HF forward passes,
        or vLLM's prompt_logprobs), this process's share of the shards (shard s goes to process s mod N); resumable
        shard by shard. The main process writes meta.json once every process finished (see finish)."""
        import torch
        from tqdm.auto import tqdm

        from leaf.io import save_safetensors_atomic

        folder.mkdir(parents=True, exist_ok=True)
        mine = [s for s in range(0, len(examples), SHARD) if (s // SHARD) % processes == rank
                and not (folder / f"shard-{s // SHARD:05d}.safetensors").exists()]
        bar = tqdm(total=sum(min(SHARD, len(examples) - s) for s in mine), unit="sample", desc="teacher cache",
                   disable=not progress)
        for shard in mine:
            keys, prompts, positions = [], [], []
            for i in range(shard, min(shard + SHARD, len(examples))):
                ex = examples[i]
                for v, (ids, mask) in enumerate([(ex.input_ids, ex.response_mask), *ex.counterfactuals]):
                    keys.append(f"{i}.{v}")
                    prompts.append(list(ids))
                    positions.append(cache_positions(mask))
            scored = engine.top_logprobs(prompts, positions, config.top_k, temperature=config.temperature,
                                         vocab=vocab)
            tensors = {}
            for key, (logp, top) in zip(keys, scored):
                tensors[f"{key}.logp"] = logp.float().contiguous()
                tensors[f"{key}.ids"] = top.to(torch.int32).contiguous()
            save_safetensors_atomic(folder / f"shard-{shard // SHARD:05d}.safetensors", tensors)
            bar.update(min(SHARD, len(examples) - shard))
        bar.close()

    @staticmethod
    def finish(folder: Path, meta: dict) -> None:
        missing = [k for k in range(0, meta["examples"], SHARD)
                   if not (folder / f"shard-{k // SHARD:05d}.safetensors").exists()]
        if missing:
            raise LeafError(f"The teacher cache in {folder} lacks {len(missing)} shard(s); rerun with --resume.")
        write_json_atomic(folder / "meta.json", meta)


def _without_engine(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "engine"}


def cache_positions(token_mask) -> list[int]:
    """The logit positions the loss reads for a response-token mask (leaf.distill.losses.logit_mask), in order."""
    import torch

    from leaf.distill.losses import logit_mask

    return logit_mask(torch.tensor([list(token_mask)], dtype=torch.bool))[0].nonzero().flatten().tolist()
