"""Trainer checkpoints of `leaf distill` and its final folder: which checkpoint to resume from, loading a student's
weights (or its LoRA adapter) from one, wrapping the student in a LoRA adapter (peft), and saving final/."""

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
    if is_lora(target):
        return load_adapter_weights(target, checkpoint)
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


def is_lora(model) -> bool:
    """Whether `model` is a peft model (the student of a --lora-r run)."""
    return hasattr(model, "peft_config")


def with_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str],
              gradient_checkpointing: bool = False):
    """The student wrapped in a fresh LoRA adapter (peft's get_peft_model): only the adapter's weights train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LeafError("--lora-r needs peft: pip install peft (or leaf's lora extra: pip install -e '.[lora]')."
                        ) from None
    if gradient_checkpointing:  # checkpointed blocks need inputs that require grad when the embeddings are frozen
        model.enable_input_require_grads()
    targets = target_modules[0] if target_modules == ["all-linear"] else target_modules
    try:
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as exc:  # e.g. target modules not found in the base model
        raise LeafError(f"--lora-target-modules {','.join(target_modules)}: {exc}") from None


def load_adapter_weights(model, checkpoint: str | Path) -> None:
    """Copy a checkpoint's LoRA adapter (adapter_model.safetensors) into a peft `model` in place; LeafError if the
    checkpoint holds no adapter, or any adapter key is missing, unexpected or of another shape."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (Path(checkpoint) / "adapter_model.safetensors").exists():
        raise LeafError(f"Checkpoint {checkpoint} holds no LoRA adapter (adapter_model.safetensors), so it is not "
                        "from a --lora-r run; start a new run (another --output) instead.")
    weights = load_peft_weights(str(checkpoint), device=str(next(model.parameters()).device))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # a shape mismatch
        raise LeafError(f"Checkpoint {checkpoint}'s adapter does not fit the student: {exc}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise LeafError(f"Checkpoint {checkpoint}'s adapter does not fit the student (missing {missing[:10]}, "
                        f"unexpected {list(result.unexpected_keys)[:10]}). Resuming would train a partly new "
                        "adapter; start a new run (another --output) instead.")


def save_final(trainer, folder: Path) -> dict:
    """Save the trained student to `folder` as a plain HF safetensors model every loader reads (vLLM, leaf serve);
    a LoRA student is merged into its base weights there (peft's merge_and_unload), its adapter alone saved to
    folder/adapter. Returns the summary's final_kind ("full" or "merged") and adapter (its folder, or None)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(trainer.model)
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; final/ gathers the full weights (every rank takes part)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if not is_lora(model):
        trainer.save_model(str(folder))
        return {"final_kind": "full", "adapter": None}
    adapter = folder / "adapter"
    trainer.save_model(str(adapter))
    if trainer.args.should_save:  # the main process
        model.merge_and_unload().save_pretrained(str(folder))  # safetensors
    return {"final_kind": "merged", "adapter": str(adapter)}
