"""Load any Hugging Face causal LM for hooking: safe defaults, clear errors, one wrapper for every architecture.

    from leaf.hooks import load_model
    model = load_model("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", device="cuda")   # or a local folder

Safe by default: weights load from safetensors only (pickle `.bin` checkpoints can run code when loaded, so they
need `allow_pickle=True`), and `trust_remote_code` stays off unless the caller asks for it.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import nnsight
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from safetensors import SafetensorError
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from leaf.errors import LeafError
from leaf.hooks.architecture import Architecture, discover, execution_order

DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CAUSAL_CLASSES = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def context_length(config) -> int | None:
    """The context a model config allows (its text config's max_position_embeddings or n_positions), or None."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


@dataclass
class HookedModel:
    """A loaded causal LM with its tokenizer, its nnsight wrapper and the module paths leaf hooks.

    `hf_model` is the plain transformers model (use it as usual); `nnsight` wraps the same object for tracing
    (`with model.nnsight.trace(input_ids=...)`), so researchers can write their own interventions next to
    leaf's built-ins.
    """

    hf_model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    arch: Architecture
    name: str
    nnsight: nnsight.NNsight = field(repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def max_length(self) -> int | None:
        return context_length(self.hf_model.config)

    @property
    def pad_token_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if value is not None:
                return int(value)
        return 0

    @functools.cached_property
    def execution_order(self) -> dict[str, int]:
        return execution_order(self.hf_model, self.device)


def wrap_model(hf_model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str = "model") -> HookedModel:
    """Wrap an already-loaded transformers causal LM (e.g. one you are training) for leaf's hooks."""
    return HookedModel(hf_model=hf_model, tokenizer=tokenizer, arch=discover(hf_model), name=name,
                       nnsight=nnsight.NNsight(hf_model))


def _can_switch_attention(config) -> bool:
    """Whether the model class can switch its attention implementation at run time (transformers: classes written
    on the AttentionInterface). Falcon, for one, cannot: loaded with SDPA it never returns attention weights, so leaf
    loads such a class eager. Unknown classes (remote code) are assumed to switch; the switch is checked anyway."""
    cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if cls is None:
        return True
    import transformers

    model_class = getattr(transformers, cls, None)
    check = getattr(model_class, "_can_set_attn_implementation", None)
    try:
        return bool(check()) if check is not None else True
    except Exception:  # a heuristic over source code: never the reason a model fails to load
        return True


def corrupt_weights_message(source: str | Path, exc: Exception | str, bad: list[Path] | None = None) -> str:
    """What a truncated or corrupt safetensors file says, naming the file(s) (`bad`, else those of `source` whose
    header does not read) and the fix."""
    path = Path(source)
    if bad is None:
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
        bad = [f for f in files if not safetensors_readable(f)] or files
    names = ", ".join(str(f) for f in bad) or str(source)
    return (f"The weights of {str(source)!r} are truncated or corrupt ({names}: {exc}). The file was cut short (an "
            "interrupted copy or download, a full disk) or damaged: copy or download it again, or re-save the model "
            "with save_pretrained.")


def safetensors_readable(file: Path) -> bool:
    """Whether a safetensors file's header reads and its tensors cover the file (no tensor data is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            handle.keys()
        return True
    except Exception:  # safetensors raises its own types
        return False


def check_local_folder(path: Path, allow_pickle: bool) -> None:
    """A local model folder leaf may load: config.json and safetensors weights (pickle ones only if allowed)."""
    if not path.is_dir():
        raise LeafError(f"Model path {str(path)!r} is a file, not a folder. Pass the folder that holds config.json "
                        "and the weights.")
    if not (path / "config.json").is_file():
        raise LeafError(f"{str(path)!r} is not a Hugging Face model folder: it has no config.json. Pass the folder "
                        "written by save_pretrained (config.json, *.safetensors, tokenizer files).")
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in files):
        broken = [path / name for name in sorted(files) if name.endswith(".safetensors")
                  and not safetensors_readable(path / name)]
        if broken:  # every loader (HF, vLLM, lm-eval) would fail on it, each with its own traceback
            raise LeafError(corrupt_weights_message(path, "its header does not read or its tensors do not cover it",
                                                    broken))
        return
    pickled = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
    if pickled and not allow_pickle:
        raise LeafError(
            f"{str(path)!r} holds only pickle weights ({', '.join(pickled)}); loading pickle can run arbitrary code, "
            "so leaf loads safetensors only. Convert once with `model.save_pretrained(dir, safe_serialization=True)` "
            "from a trusted environment, or pass allow_pickle=True (CLI: --allow-pickle) if you trust the file.")
    if not pickled:
        raise LeafError(f"{str(path)!r} has a config.json but no weights (*.safetensors). Copy the weight files into "
                        "the folder, or point to the folder that has them.")


def resolve_source(name_or_path: str | Path) -> str:
    """What a model argument names: an existing local folder, else a hub id, else an error naming the path.

    The rule: a path that exists is local. A missing one is taken for a hub id only when it has the hub's shape
    (`org/name`) and nothing suggests a folder was meant: it does not start with `.`, `/` or `~`, has no second `/`,
    and its first part (`org`) is not a folder here (`runs/teacher` with a `runs/` folder present is a missing
    folder, not a hub repository to download). Anything else that does not exist is an error."""
    source = str(name_or_path)
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    first = source.split("/", 1)[0]
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")) and not Path(first).is_dir():
        return source
    where = f" ({first}/ exists, so a folder was meant)" if "/" in source and Path(first).is_dir() else ""
    raise LeafError(f"Model path {source!r} does not exist{where}. Pass a local folder written by save_pretrained, "
                    "or a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct' (used only when no local folder is meant).")


def _refuse_remote_code(source: str, exc: Exception) -> None:
    """transformers' refusal to run a checkpoint's own code, as leaf's message with the flag to pass."""
    if "trust_remote_code" in str(exc):
        raise LeafError(f"{source!r} runs its own model code (a custom architecture). leaf never runs it unless "
                        "asked: pass --trust-remote-code (trust_remote_code=True) only if you trust that code.") from None


def _check_causal(config, source: str, trust_remote_code: bool = False) -> None:
    model_type = getattr(config, "model_type", "?")
    if trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return  # the checkpoint's own code declares a causal LM class (loaded only because the caller trusts it)
    archs = list(getattr(config, "architectures", None) or [])
    causal_arch = not archs or any(a in _CAUSAL_CLASSES or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False) \
            or not causal_arch:
        what = ", ".join(archs) or model_type
        raise LeafError(f"{source!r} is a {what} checkpoint (model_type={model_type!r}), not a causal language "
                        "model. leaf needs a decoder-only LM that AutoModelForCausalLM loads (Llama, Qwen, Mistral, "
                        "GPT-2, ...).")


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               attn_implementation: str | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
               revision: str | None = None, device_map: str | dict | None = None,
               max_memory: dict | None = None) -> HookedModel:
    """Load a causal LM and its tokenizer from a local folder or a hub id, in eval mode, ready for hooks.

    dtype: "float32" (default), "bfloat16", "float16" or "auto" (the checkpoint's). attn_implementation: None
    keeps transformers' default (SDPA); attention hooks switch to eager for the duration of a call, since SDPA
    returns no probabilities. Weights are safetensors-only unless allow_pickle=True. device_map ("auto", or a
    transformers device map) spreads a model too big for one GPU over all visible ones (accelerate's dispatch);
    inputs then go to the device of the input embeddings, and gradients flow back through every device;
    max_memory ({gpu index: bytes}) limits it to some GPUs.
    """
    source = resolve_source(name_or_path)
    path = Path(source)
    if path.exists():
        check_local_folder(path, allow_pickle)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LeafError(f"Unknown dtype {dtype!r}. Available: {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        _refuse_remote_code(source, exc)
        raise LeafError(f"Could not read the config of {source!r}: {exc}\nFor a hub id, check the name and that the "
                        "hub is reachable (or download the model and pass its folder).") from None
    _check_causal(config, source, trust_remote_code)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                  use_safetensors=None if allow_pickle else True)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    elif not _can_switch_attention(config):
        kwargs["attn_implementation"] = "eager"  # attention maps need eager, and this class cannot switch later
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except SafetensorError as exc:  # a truncated or corrupt weights file (a copy cut short, a full disk)
        raise LeafError(corrupt_weights_message(source, exc)) from None
    except (OSError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # torch.load raises the last three
        hint = (" The hub checkpoint may have only pickle weights: pass allow_pickle=True (--allow-pickle) if you "
                "trust it." if not path.exists() and not allow_pickle else "")
        raise LeafError(f"Could not load {source!r}: {exc}.{hint}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise LeafError(f"The tokenizer of {source!r} is a slow (Python) tokenizer; leaf needs a fast one for character "
                        "offsets. Install `tokenizers` and re-save it with AutoTokenizer.from_pretrained(..., "
                        "use_fast=True).save_pretrained(...).")
    try:
        if device_map is None:
            hf_model.to(torch.device(device))
        hf_model.eval()
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise LeafError(f"Cannot use device {str(device)!r}: {exc}. Use cpu, cuda or cuda:N (a GPU build of torch "
                        "is needed for cuda).") from None
    return wrap_model(hf_model, tokenizer, name=source)


def model_summary(model: HookedModel) -> dict:
    """A JSON-able description of a loaded model, for reports."""
    return {"name": model.name, "class": type(model.hf_model).__name__, "dtype": str(model.dtype).replace("torch.", ""),
            "device": str(model.device), "parameters": sum(p.numel() for p in model.hf_model.parameters()),
            "architecture": json.loads(json.dumps(model.arch.__dict__))}


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A model's (fast) tokenizer alone, e.g. for its chat template, without loading weights."""
    source = resolve_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        _refuse_remote_code(source, exc)
        raise LeafError(f"Could not load the tokenizer of {source!r}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise LeafError(f"The tokenizer of {source!r} is a slow (Python) tokenizer; leaf needs a fast one.")
    return tokenizer
