import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.errors import LeafError
from leaf.models.tiny import FAMILIES, SIZES, build_tiny_model, byte_tokenizer


def test_same_seed_gives_identical_weights_and_other_seed_differs(tmp_path):
    a = load_file(build_tiny_model("llama", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model("llama", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model("llama", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_reloads_as_a_causal_lm_with_vllm_compatible_heads(model_dirs, name):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[name])
    config = model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    assert hidden // heads >= 32
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ids = torch.tensor([[256, 72, 105]])
    assert model(ids).logits.shape == (1, 3, config.vocab_size)


def test_qwen2_has_gqa_and_tied_embeddings(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"])
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_byte_tokenizer_round_trips_any_text_with_exact_offsets(model_dirs):
    tok = AutoTokenizer.from_pretrained(model_dirs["llama"])
    text = "Zoë paid $3.50 — 2×7=14 ✓\n\tdone"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc.input_ids == list(text.encode("utf-8"))
    assert tok.decode(enc.input_ids) == text
    spans = [span for i, span in enumerate(enc.offset_mapping) if i == 0 or span != enc.offset_mapping[i - 1]]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # multi-byte chars share one span
    assert "".join(text[s:e] for s, e in spans) == text


def test_chat_template_puts_bos_first_and_role_markers_are_single_tokens():
    tok = byte_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids == [tok.bos_token_id, tok.convert_tokens_to_ids("<|user|>"), 10, 104, 105,
                   tok.convert_tokens_to_ids("<|end|>"), 10, tok.convert_tokens_to_ids("<|assistant|>"), 10]


def test_small_size_is_about_ten_million_parameters(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama", tmp_path / "s", size="small"))
    assert 8e6 < sum(p.numel() for p in model.parameters()) < 13e6
    assert SIZES["small"].hidden_size // SIZES["small"].num_heads == 32


def test_unknown_family_and_size_name_the_choices(tmp_path):
    with pytest.raises(LeafError, match="Available: llama, qwen2, mistral, gpt2"):
        build_tiny_model("bert", tmp_path / "x")
    with pytest.raises(LeafError, match="Available: tiny, small"):
        build_tiny_model("llama", tmp_path / "x", size="huge")


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_every_token_a_user_loads_has_a_logit_row(tmp_path, tokenizer):
    """AutoTokenizer may pick a family's own class that adds tokens (Qwen2Tokenizer adds <|endoftext|>)."""
    for family in FAMILIES:
        path = build_tiny_model(family, tmp_path / family, tokenizer=tokenizer)
        tok = AutoTokenizer.from_pretrained(path)
        assert max(tok.get_vocab().values()) < AutoModelForCausalLM.from_pretrained(path).config.vocab_size
