"""Trainer checkpoints of `leaf distill`: which one to resume from, and loading a student's weights from one."""

from __future__ import annotations

import re
from pathlib import Path

from leaf.errors import LeafError


def last_complete_checkpoint(folder: Path) -> tuple[str | None, list[Path]]:
    """The newest Trainer checkpoint that was completely written (its trainer_state.json is saved last), and the
    newer, partly written ones an interruption left behind."""
    if not folder.is_dir():
        return None, []
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir()
                    if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))), reverse=True)
    partial = []
    for _, path in found:
        if (path / "trainer_state.json").exists():
            return str(path), partial
        partial.append(path)
    return None, partial


def load_checkpoint_weights(model, checkpoint: str | Path) -> None:
    """Copy a saved checkpoint's weights into `model` in place, read the way from_pretrained reads them (key renames
    and conversions applied, tied weights tied); LeafError if any key is missing, unexpected or of another shape."""
    import torch
    from accelerate.utils import extract_model_from_parallel

    target = extract_model_from_parallel(model)
    loaded, info = type(target).from_pretrained(str(checkpoint), dtype=next(target.parameters()).dtype,
                                                output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    ours, theirs = target.state_dict(), loaded.state_dict()
    if ours.keys() != theirs.keys():
        problems["keys_differ"] = sorted(set(ours) ^ set(theirs))[:10]
    if problems:
        raise LeafError(f"Checkpoint {checkpoint} does not fit the student ({problems}). Resuming would train "
                        "from partly random weights; start a new run (another --output) instead.")
    with torch.no_grad():
        for name, tensor in ours.items():
            tensor.copy_(theirs[name])
    del loaded
