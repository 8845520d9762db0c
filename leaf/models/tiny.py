"""Tiny random causal LMs, built offline, for tests, benchmarks and the demo.

Each model is a normal Hugging Face folder (config.json, model.safetensors, tokenizer files with a chat template)
that `AutoModelForCausalLM.from_pretrained`, `leaf.hooks.load_model` and vLLM's CPU backend all load. Nothing is
downloaded: the weights are random, deterministic from a seed, and the tokenizer is byte-level (every UTF-8 byte is a
token, so any text round-trips and character offsets are exact).

    from leaf.models.tiny import build_tiny_model
    path = build_tiny_model("qwen2", "/tmp/tiny-qwen2", seed=0)            # ~0.3M parameters
    path = build_tiny_model("llama", "/tmp/small-llama", size="small")     # ~10M parameters

Head dim is 32 everywhere: vLLM's CPU attention supports {32, 64, 80, ...} and fails at the first generate on 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.models.families import FAMILIES, SIZES, TinySize, get_family  # noqa: F401 (re-exported)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# One turn: role marker, newline, content, end marker, newline. The BOS token at position 0 is the attention sink.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}\n{{ message['content'] }}{{ '<|end|>' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, the alphabet of the ByteLevel pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0-255 are the UTF-8 bytes, then BOS, EOS, PAD and the chat role markers."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


# A fixed corpus for the BPE tokenizer, so that its merges (and so its token boundaries) are deterministic.
_BPE_CORPUS = [
    "Tom has 3 apples. He buys 2 more apples. How many apples does he have now?",
    "Ann reads 4 pages a day for 5 days. The book is blue. How many pages does she read?",
    "The store sells pencils for $2 each and pens for $5 each. Each cut takes 5 seconds.",
    "She has 12 gifts to wrap for her family, friends and teachers, and 144 inches of ribbon.",
    "Step 1: add the numbers. Step 2: multiply the total by the price. #### 42",
    "There are 7 days in a week and 24 hours in a day; the answer is 168 hours.",
] * 4


def bpe_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small fixed corpus: every byte is still a token (any text encodes),
    but frequent words are single tokens, so its token boundaries differ from `byte_tokenizer`'s. Same special
    tokens and chat template. Used to test teacher/student pairs with different tokenizers."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (split on whitespace; anything else is <|unk|>), with the same special
    tokens and chat template. The demo's task writes only such words (leaf.demo.task.demo_tokenizer)."""
    unk = "<|unk|>"
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, unk, *(w for w in words if w not in SPECIAL_TOKENS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=unk)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


TOKENIZERS = {"byte": byte_tokenizer, "bpe": bpe_tokenizer}


def _config(family: str, size: TinySize, vocab_size: int, tok: PreTrainedTokenizerFast):
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return get_family(family).config(size, vocab_size, ids)


def build_tiny_model(family: str, output_dir: str | Path, *, seed: int = 0, size: str | TinySize = "tiny",
                     vocab_size: int | None = None, dtype: torch.dtype = torch.float32,
                     tokenizer: str | PreTrainedTokenizerFast = "byte", overwrite: bool = False) -> Path:
    """Build a random `family` causal LM with the byte tokenizer and save it as a HF folder; returns the folder.

    A non-empty `output_dir` is refused (it may hold trained weights) unless overwrite=True.

    Deterministic: the same (family, size, seed, vocab_size) gives bit-identical weights. `vocab_size` defaults to
    the tokenizer's size rounded up to a multiple of 8 (the logit matrix is padded, as in real checkpoints).
    tokenizer: "byte" (default: ids 0-255 are the UTF-8 bytes) or "bpe" (byte-level BPE with merges).
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise LeafError(f"Unknown tiny model size {size!r}. Available: {', '.join(SIZES)}.")
        size = SIZES[size]
    if size.hidden_size // size.num_heads < 32:
        raise LeafError(f"head dim {size.hidden_size // size.num_heads} < 32: vLLM's CPU attention cannot run it. "
                        "Use hidden_size >= 32 * num_heads.")
    if isinstance(tokenizer, str) and tokenizer not in TOKENIZERS:
        raise LeafError(f"Unknown tokenizer {tokenizer!r}. Available: {', '.join(TOKENIZERS)}, or pass a tokenizer.")
    output_dir = check_output_folder(output_dir, allow_nonempty=overwrite)
    tok = TOKENIZERS[tokenizer]() if isinstance(tokenizer, str) else tokenizer
    output_dir.mkdir(parents=True, exist_ok=True)
    # AutoTokenizer may load a family's own class that adds tokens (Qwen2Tokenizer adds <|endoftext|>): size the
    # logit matrix from what a user will actually load, so that every token id has a row.
    _config(family, size, len(tok) + 8, tok).save_pretrained(output_dir)
    tok.save_pretrained(output_dir)
    loaded = len(AutoTokenizer.from_pretrained(output_dir))
    vocab_size = vocab_size or -(-loaded // 8) * 8
    if vocab_size < loaded:
        raise LeafError(f"vocab_size {vocab_size} is smaller than the tokenizer ({loaded} tokens).")
    config = _config(family, size, vocab_size, tok)
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(output_dir, safe_serialization=True)
    name = tokenizer if isinstance(tokenizer, str) else f"given ({len(tok)} tokens)"
    recipe = {"family": family, "seed": seed, "size": size.__dict__, "vocab_size": vocab_size, "tokenizer": name}
    (output_dir / "leaf_tiny_model.json").write_text(json.dumps(recipe, indent=2))
    return output_dir
