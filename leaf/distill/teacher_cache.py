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
                "data": fingerprint}

    @staticmethod
    def complete(folder: Path, meta: dict) -> bool:
        """Whether the folder holds a finished cache of exactly this data and these settings."""
        path = folder / "meta.json"
        if not path.exists():
            return False
        if json.loads(path.read_text()) != meta:
            raise LeafError(f"{folder} holds a teacher cache for other data or settings; delete it or use "
                            "another --output.")
        return True

    @staticmethod
    def write(folder: Path, teacher, examples: list[Example], config: DistillConfig, vocab: int, *, rank: int = 0,
              processes: int = 1) -> None:
        """Run the teacher once over every original and counterfactual, this process's share of the shards
        (shard s goes to process s mod N); resumable shard by shard. The main process writes meta.json once every
        process finished (see finish)."""
        import torch

        from leaf.io import save_safetensors_atomic
        from leaf.distill.losses import logit_mask, teacher_topk

        folder.mkdir(parents=True, exist_ok=True)
        hf = teacher.hf_model.eval()
        for shard in range(0, len(examples), SHARD):
            path = folder / f"shard-{shard // SHARD:05d}.safetensors"
            if (shard // SHARD) % processes != rank or path.exists():
                continue
            tensors = {}
            for i in range(shard, min(shard + SHARD, len(examples))):
                ex = examples[i]
                for v, (ids, mask) in enumerate([(ex.input_ids, ex.response_mask), *ex.counterfactuals]):
                    selected = logit_mask(torch.tensor([mask], device=teacher.device))        # (1, T)
                    keep = selected.any(0).nonzero().flatten()
                    with torch.no_grad():  # the LM head only where the loss reads the teacher
                        logits = hf(input_ids=torch.tensor([ids], device=teacher.device), logits_to_keep=keep).logits
                    logp, top = teacher_topk(logits, selected[:, keep], config.top_k,
                                             temperature=config.temperature, vocab=vocab)
                    tensors[f"{i}.{v}.logp"] = logp.cpu().contiguous()
                    tensors[f"{i}.{v}.ids"] = top.to(torch.int32).cpu().contiguous()
            save_safetensors_atomic(path, tensors)

    @staticmethod
    def finish(folder: Path, meta: dict) -> None:
        missing = [k for k in range(0, meta["examples"], SHARD)
                   if not (folder / f"shard-{k // SHARD:05d}.safetensors").exists()]
        if missing:
            raise LeafError(f"The teacher cache in {folder} lacks {len(missing)} shard(s); rerun with --resume.")
        write_json_atomic(folder / "meta.json", meta)
