"""The architecture families and sizes `leaf.models.tiny` builds: one registry each.

A family is one entry of FAMILIES: the transformers config it makes for a size, a vocabulary and the tokenizer's
special-token ids, with the layout it stands for (tied or untied head, GQA/MQA, parallel blocks, renamed keys).
`leaf tiny-model --family/--size` offer these names, and the test suite builds one model per family, so a new family
is one entry. Light: transformers is imported inside each builder, so that the command line reads the names
without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from leaf.errors import LeafError


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int


SIZES: dict[str, TinySize] = {
    # Under 1M parameters: what the test suite uses.
    "tiny": TinySize(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                     max_positions=1024),
    # About 10M parameters: benchmarks and the demo.
    "small": TinySize(hidden_size=384, num_layers=6, num_heads=12, num_kv_heads=4, intermediate_size=1024,
                      max_positions=2048),
}


def _common(size: TinySize, vocab_size: int, ids: dict) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
                num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                intermediate_size=size.intermediate_size, max_position_embeddings=size.max_positions,
                head_dim=size.hidden_size // size.num_heads, **ids)


def _llama(size: TinySize, vocab_size: int, ids: dict):
    from transformers import LlamaConfig

    return LlamaConfig(tie_word_embeddings=False, **_common(size, vocab_size, ids))


def _qwen2(size: TinySize, vocab_size: int, ids: dict):
    from transformers import Qwen2Config

    return Qwen2Config(tie_word_embeddings=True, use_sliding_window=False, **_common(size, vocab_size, ids))


def _mistral(size: TinySize, vocab_size: int, ids: dict):
    from transformers import MistralConfig

    return MistralConfig(tie_word_embeddings=False, sliding_window=size.max_positions,
                         **_common(size, vocab_size, ids))


def _gpt2(size: TinySize, vocab_size: int, ids: dict):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_embd=size.hidden_size, n_layer=size.num_layers, n_head=size.num_heads,
                      n_inner=size.intermediate_size, n_positions=size.max_positions, tie_word_embeddings=True, **ids)


def _gpt_neox(size: TinySize, vocab_size: int, ids: dict):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
                         num_attention_heads=size.num_heads, intermediate_size=size.intermediate_size,
                         max_position_embeddings=size.max_positions, tie_word_embeddings=False, **ids)


def _falcon(size: TinySize, vocab_size: int, ids: dict):
    from transformers import FalconConfig

    # its attention cannot be switched at run time (leaf loads it eager for attention maps)
    return FalconConfig(vocab_size=vocab_size, hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
                        num_attention_heads=size.num_heads, multi_query=True, new_decoder_architecture=False,
                        parallel_attn=True, alibi=False, bias=False, max_position_embeddings=size.max_positions,
                        tie_word_embeddings=True, **ids)


@dataclass(frozen=True)
class Family:
    """config(size, vocab_size, special-token ids) -> a transformers config; layout: what the family stands for."""

    config: Callable
    layout: str


FAMILIES: dict[str, Family] = {
    "llama": Family(_llama, "untied head, GQA"),
    "qwen2": Family(_qwen2, "GQA + tied embeddings + qkv bias, as the real Qwen2 family"),
    "mistral": Family(_mistral, "untied head, GQA, sliding-window config"),
    "gpt2": Family(_gpt2, "Conv1D projections, learned positions, tied head"),
    "gpt_neox": Family(_gpt_neox, "Pythia's layout: untied `embed_out` (renamed to lm_head on load), partial rotary"),
    "falcon": Family(_falcon, "Falcon-7B's layout: multi-query attention, parallel attention + MLP, tied embeddings"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise LeafError(f"Unknown tiny model family {name!r}. Available: {', '.join(FAMILIES)}.")
    return FAMILIES[name]
