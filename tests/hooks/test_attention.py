"""Attention hooks against output_attentions on an eager model, on every test architecture, with padding."""

import pytest
import torch

from leaf.errors import LeafError
from leaf.hooks import attention_mass, attention_probs, encode_prompt_response, load_model
from tests.hooks import reference
from tests.tolerances import MODEL_ATOL, MODEL_RTOL

ATOL, RTOL = MODEL_ATOL, MODEL_RTOL   # tests/tolerances.py: a tiny model's float32 passes


def test_attention_probs_match_output_attentions(model_dirs, family, encoded):
    model = load_model(model_dirs[family])  # loaded with SDPA: the hook switches to eager for the call
    got = attention_probs(model, [e.input_ids for e in encoded], batch_size=3)
    ref_model = reference.eager_model(model_dirs[family])
    for sample, probs in zip(encoded, got):
        want = reference.attentions(ref_model, sample.input_ids)
        assert probs.shape == want.shape
        torch.testing.assert_close(probs, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("exclude_sink", [True, False])
def test_attention_mass_matches_the_reduction_of_full_maps(model_dirs, family, encoded, exclude_sink):
    model = load_model(model_dirs[family])
    query = [e.response_mask for e in encoded]
    keys = {"prompt": [e.prompt_mask for e in encoded], "all": [torch.ones_like(e.prompt_mask) for e in encoded]}
    got = attention_mass(model, [e.input_ids for e in encoded], query, keys, exclude_sink=exclude_sink,
                         batch_size=3)
    ref_model = reference.eager_model(model_dirs[family])
    for sample, mass in zip(encoded, got):
        probs = reference.attentions(ref_model, sample.input_ids)
        for name, key in [("prompt", sample.prompt_mask.clone()), ("all", torch.ones_like(sample.prompt_mask))]:
            if exclude_sink:
                key[0] = False
            want = reference.mass(probs, sample.response_mask, key)
            assert mass[name].shape == (model.arch.num_layers, model.arch.num_heads)
            torch.testing.assert_close(mass[name], want, atol=ATOL, rtol=RTOL)
        if not exclude_sink:  # every row of a softmax sums to one
            # a float32 sum of <= 128 weights totalling 1 is off by at most 128·eps ≈ 1.5e-5 (Higham),
            # typically far less
            torch.testing.assert_close(mass["all"], torch.ones_like(mass["all"]), atol=ATOL, rtol=0)


def test_layer_selection_and_negative_indices(model_dirs, samples):
    model = load_model(model_dirs["mistral"])
    full = attention_probs(model, [samples[0].input_ids])[0]
    last = attention_probs(model, [samples[0].input_ids], layers=[-1])[0]
    assert last.shape[0] == 1
    torch.testing.assert_close(last[0], full[-1])
    with pytest.raises(LeafError, match="Layer 5 does not exist: the model has 2 layers"):
        attention_probs(model, [samples[0].input_ids], layers=[5])


def test_attention_hooks_restore_the_attention_implementation(model_dirs, samples):
    model = load_model(model_dirs["llama"])
    before = model.hf_model.config._attn_implementation
    attention_probs(model, [samples[0].input_ids])
    assert model.hf_model.config._attn_implementation == before == "sdpa"


def test_a_layers_attention_map_is_freed_before_the_next_layer_runs(model_dirs):
    """The on-the-fly reduction holds no (B, H, T, T) map past its layer: what keeps peak memory flat in T."""
    import weakref

    model = load_model(model_dirs["llama"])
    sample = encode_prompt_response(model.tokenizer, "Tom has 3 apples. How many?", "3")
    model.execution_order  # measured once per model by a plain forward; not the pass under test
    layers = model.hf_model.model.layers
    maps, alive_at_next = {}, []

    def keep_ref(index):
        def hook(_module, _args, output):
            maps[index] = weakref.ref(output[1])
        return hook

    def check_previous(index):
        def hook(_module, _args):
            alive_at_next.append(maps[index - 1]() is not None)
        return hook

    handles = [layers[i].self_attn.register_forward_hook(keep_ref(i)) for i in range(len(layers))]
    handles += [layers[i].self_attn.register_forward_pre_hook(check_previous(i)) for i in range(1, len(layers))]
    try:
        attention_mass(model, [sample.input_ids], [sample.response_mask], {"prompt": [sample.prompt_mask]})
    finally:
        for handle in handles:
            handle.remove()
    assert alive_at_next == [False] * (len(layers) - 1)
