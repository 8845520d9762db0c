"""Token sequences in, right-padded batches out, and the per-sample masks that go with them.

Every hook takes a list of samples (token id sequences of any lengths) and returns one result per sample in the
input order. Inside, samples are grouped by length into batches of `batch_size`, right-padded (so position ids and
the causal mask of real tokens are those of an unpadded run), and per-sample masks are padded with False.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from leaf.errors import LeafError

# A mask for one sample: booleans (or 0/1) of the sample's length, or a tensor of them.
MaskLike = Sequence[bool] | Sequence[int] | torch.Tensor


@dataclass
class TokenBatch:
    """Right-padded ids with their attention mask; `index` maps batch rows back to input positions."""

    input_ids: torch.Tensor       # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    lengths: list[int]
    index: list[int]

    def pad_masks(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-sample boolean masks (this batch's rows) -> (B, T) bool, False on padding."""
        out = torch.zeros(self.input_ids.shape, dtype=torch.bool, device=self.input_ids.device)
        for row, mask in enumerate(masks):
            out[row, : mask.numel()] = mask.to(out.device)
        return out


def as_id_tensors(samples: Sequence[Sequence[int] | torch.Tensor], max_length: int | None) -> list[torch.Tensor]:
    """Validate token id samples: non-empty, 1-D, not longer than the model accepts."""
    if isinstance(samples, torch.Tensor) or (len(samples) and isinstance(samples[0], int)):
        raise LeafError("Pass a list of samples (each a list or 1-D tensor of token ids), not a single sequence: "
                        "wrap it as [ids].")
    if len(samples) == 0:
        raise LeafError("No samples given: pass a non-empty list of token id sequences.")
    out = []
    for i, sample in enumerate(samples):
        ids = torch.as_tensor(sample, dtype=torch.long)
        if ids.dim() != 1:
            raise LeafError(f"Sample {i} has shape {tuple(ids.shape)}; each sample must be a 1-D sequence of token ids "
                            "(unpadded). Split a (B, T) batch into its rows without padding.")
        if ids.numel() == 0:
            raise LeafError(f"Sample {i} is empty (0 tokens). Drop it, or check the text and the chat template that "
                            "produced it.")
        if max_length is not None and ids.numel() > max_length:
            raise LeafError(f"Sample {i} has {ids.numel()} tokens but the model accepts at most {max_length} "
                            "(max_position_embeddings). Truncate the sample or use a model with a longer context.")
        out.append(ids)
    return out


def as_masks(masks: Sequence[MaskLike] | None, ids: Sequence[torch.Tensor], what: str) -> list[torch.Tensor] | None:
    """Validate per-sample masks against the samples' lengths; None stays None."""
    if masks is None:
        return None
    if isinstance(masks, torch.Tensor) and masks.dim() == 2 and masks.shape[0] == len(ids):
        masks = [row[: len(sample)] for row, sample in zip(masks, ids)]
    if len(masks) != len(ids):
        raise LeafError(f"{what} has {len(masks)} entries for {len(ids)} samples: give one mask per sample.")
    out = []
    for i, (mask, sample) in enumerate(zip(masks, ids)):
        mask = torch.as_tensor(mask).bool().flatten()
        if mask.numel() != sample.numel():
            raise LeafError(f"{what} of sample {i} has {mask.numel()} entries but the sample has {sample.numel()} "
                            "tokens: the mask must mark the sample's own tokens, one entry per token.")
        out.append(mask)
    return out


def iter_batches(ids: Sequence[torch.Tensor], batch_size: int, pad_id: int,
                 device: torch.device) -> Iterator[TokenBatch]:
    """Group samples of similar length (longest first) into right-padded batches."""
    if batch_size < 1:
        raise LeafError(f"batch_size must be at least 1, got {batch_size}.")
    order = sorted(range(len(ids)), key=lambda i: -ids[i].numel())
    for start in range(0, len(order), batch_size):
        index = order[start: start + batch_size]
        lengths = [ids[i].numel() for i in index]
        input_ids = torch.full((len(index), max(lengths)), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(index):
            input_ids[row, : lengths[row]] = ids[i]
            attention_mask[row, : lengths[row]] = 1
        yield TokenBatch(input_ids.to(device), attention_mask.to(device), lengths, index)
