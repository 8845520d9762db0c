"""The research tools of leaf.hooks against plain PyTorch: activation patching, alignment, attribution methods,
per-head focus and pictures; and the hooks leave no trace."""

import pytest
import torch
from transformers import AutoTokenizer

from leaf.errors import LeafError
from leaf.hooks import (Alignment, attribute, attribute_all, counterfactual_pair, encode_prompt_response, head_focus,
                        heatmap_png, list_methods, load_model, patch_all, patching_sweep)
from tests.hooks import reference
from tests.hooks.test_no_trace import _hook_count

PROMPT = "Tom has 3 apples. His hat is red. He buys 2 more apples. How many apples does he have?"
RESPONSE = "Tom has 3 + 2 = 5 apples.\n#### 5"
DISTRACTOR = "His hat is red."


def pair(tokenizer):
    """X and X\\A (the distractor pruned), rendered and encoded, with their alignment and response masks."""
    start = PROMPT.index(DISTRACTOR)
    spans = [(start, start + len(DISTRACTOR))]
    p = counterfactual_pair(tokenizer, PROMPT, RESPONSE, spans)
    return p.original, p.counterfactual, p.alignment, p.target, p.cf_target, p.pruned


def test_counterfactual_pair_is_both_samples_encoded_by_hand(model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])       # byte-level: one token per character
    p = counterfactual_pair(tokenizer, PROMPT, RESPONSE, [(PROMPT.index(DISTRACTOR),
                                                          PROMPT.index(DISTRACTOR) + len(DISTRACTOR))])
    by_hand = "Tom has 3 apples. He buys 2 more apples. How many apples does he have?"   # the cut tidied
    x, xs = encode_prompt_response(tokenizer, PROMPT, RESPONSE), encode_prompt_response(tokenizer, by_hand, RESPONSE)
    assert torch.equal(p.original.input_ids, x.input_ids) and torch.equal(p.counterfactual.input_ids, xs.input_ids)
    (a, b), = p.pruned
    assert p.text[a:b] == DISTRACTOR and p.cf_text == p.text[:a] + p.text[b + 1:]        # and the space after it
    inside = [i for i, (s, e) in enumerate(x.offsets.tolist()) if s < b and a < e]
    assert p.confounder.nonzero().flatten().tolist() == inside == p.alignment.pruned and len(inside) == len(DISTRACTOR)
    assert torch.equal(p.target, x.response_mask) and torch.equal(p.cf_target, xs.response_mask)  # token 0: prompt
    with pytest.raises(LeafError, match="inside the prompt"):
        counterfactual_pair(tokenizer, PROMPT, RESPONSE, [(0, len(PROMPT) + 1)])


@pytest.fixture(scope="module")
def llama(model_dirs):
    return load_model(model_dirs["llama"]), reference.eager_model(model_dirs["llama"])


def test_alignment_partners_every_surviving_token_and_names_the_rest(model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])       # byte-level: one token per character
    x, xs, alignment, *_, pruned = pair(tokenizer)
    text = tokenizer.decode(x.input_ids)
    (a, b), = pruned
    inside = [i for i, (s, e) in enumerate(x.offsets.tolist()) if s < b and a < e]
    assert alignment.pruned == inside and len(inside) == len(DISTRACTOR)
    assert len(alignment.pairs) + len(alignment.pruned) + len(alignment.changed) == len(x.input_ids)
    for i, j in alignment.pairs:                                       # partners carry the same text
        assert tokenizer.decode(x.input_ids[i:i + 1]) == tokenizer.decode(xs.input_ids[j:j + 1])
    assert [i for i, _ in alignment.pairs] == sorted(i for i, _ in alignment.pairs)
    assert len(alignment.changed) <= 1                                   # at most the space the cut tidied away
    assert text  # decodes
    assert alignment.reversed().pairs == [(j, i) for i, j in alignment.pairs]


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
@pytest.mark.parametrize("component", ["resid", "attn", "mlp", "head"])
def test_patching_matches_plain_pytorch_hooks(model_dirs, fam, component):
    model = load_model(model_dirs[fam])
    tokenizer = model.tokenizer
    x, xs, alignment, tx, _, _ = pair(tokenizer)
    result = patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, component=component, batch_size=16)
    expected = reference.patching_map(reference.eager_model(model_dirs[fam]), x.input_ids, xs.input_ids,
                                      alignment.pairs, tx, component, model.arch.num_heads)
    assert result.effect.shape == expected.shape
    assert torch.equal(torch.isnan(result.effect), torch.isnan(expected))
    torch.testing.assert_close(result.effect, expected, atol=2e-5, rtol=1e-4, equal_nan=True)
    if component != "head":                                            # unpartnered positions are never patched
        assert torch.isnan(result.effect[:, alignment.pruned]).all()
        assert not torch.isnan(result.effect[:, [i for i, _ in alignment.pairs]]).any()
    assert torch.isfinite(result.effect[~torch.isnan(result.effect)]).all() and result.effect.nan_to_num().abs().max() > 0


@pytest.mark.parametrize("component", ["resid", "attn", "mlp", "head"])
def test_patching_a_run_with_its_own_activations_changes_nothing(llama, component):
    model, _ = llama
    x, _, _, tx, _, _ = pair(model.tokenizer)
    own = patching_sweep(model, x.input_ids, x.input_ids, Alignment.identity(len(x.input_ids)), tx,
                         component=component, batch_size=64)
    assert torch.equal(own.effect, torch.zeros_like(own.effect))      # exactly: the same numbers go back in


def test_patching_every_layer_everywhere_gives_the_source_output(llama):
    """Equal lengths (one word swapped for another of the same byte length): the residual stream of every layer
    at every position from the source makes the target run the source run."""
    model, hf = llama
    tokenizer = model.tokenizer
    x = encode_prompt_response(tokenizer, PROMPT, RESPONSE)
    xs = encode_prompt_response(tokenizer, PROMPT.replace("red", "big"), RESPONSE)
    assert len(x.input_ids) == len(xs.input_ids) and not torch.equal(x.input_ids, xs.input_ids)
    tx = x.response_mask.clone()
    tx[0] = False
    patched = patch_all(model, x.input_ids, xs.input_ids, Alignment.identity(len(x.input_ids)), tx)
    with torch.no_grad():
        source_logits = hf(xs.input_ids[None]).logits[0]
        clean_logits = hf(x.input_ids[None]).logits[0]
    torch.testing.assert_close(patched.logits, source_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(clean_logits, source_logits, atol=1e-3)  # the two inputs do differ
    assert patched.metric == pytest.approx(reference._logprob(source_logits, x.input_ids, tx), abs=1e-5)


def test_the_batched_sweep_equals_the_naive_loop_and_runs_both_directions(llama):
    model, _ = llama
    x, xs, alignment, tx, ts, _ = pair(model.tokenizer)
    batched = patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, batch_size=64, source_mask=ts)
    naive = patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, batch_size=1, source_mask=ts)
    torch.testing.assert_close(batched.effect, naive.effect, atol=1e-6, rtol=0, equal_nan=True)
    reverse = patching_sweep(model, xs.input_ids, x.input_ids, alignment.reversed(), ts, batch_size=64)
    assert reverse.effect.shape == (model.arch.num_layers, len(xs.input_ids))
    assert not torch.isnan(reverse.effect).all(-1).any()
    assert batched.notes and "no partner" in batched.notes[0]
    assert batched.source == pytest.approx(reverse.clean, abs=1e-5)    # the source's own metric, reported


def test_patching_errors_are_clear(llama):
    model, _ = llama
    x, xs, alignment, tx, _, _ = pair(model.tokenizer)
    with pytest.raises(LeafError, match="Unknown component"):
        patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, component="ffn")
    with pytest.raises(LeafError, match="outside the target or source"):
        patching_sweep(model, x.input_ids, xs.input_ids, Alignment(pairs=[(0, 10_000)]), tx)
    with pytest.raises(LeafError, match="Layer 9 does not exist"):
        patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, layers=[9])


def test_gradient_methods_match_autograd_from_one_backward_pass(llama, monkeypatch):
    import leaf.hooks.attribution as attribution

    model, hf = llama
    x, _, _, tx, _, _ = pair(model.tokenizer)
    calls = []
    real_run = attribution.run
    monkeypatch.setattr(attribution, "run", lambda *a, **k: calls.append(1) or real_run(*a, **k))
    got = attribute_all(model, [x.input_ids], [tx], ["saliency", "input_x_gradient"])
    assert len(calls) == 1                                             # both from one backward pass
    embeds = hf.get_input_embeddings()(x.input_ids[None]).detach().requires_grad_(True)
    logits = hf(inputs_embeds=embeds).logits[0]
    f = reference._logprob(logits, x.input_ids, tx)
    positions = tx.nonzero().flatten()
    f_tensor = -torch.nn.functional.cross_entropy(logits[positions - 1].float(), x.input_ids[positions])
    (grad,) = torch.autograd.grad(f_tensor, embeds)
    assert f == pytest.approx(float(f_tensor))
    torch.testing.assert_close(got["saliency"][0], grad[0].norm(dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["input_x_gradient"][0], (grad[0] * embeds[0].detach()).sum(-1), atol=1e-6,
                               rtol=1e-5)
    expected_saliency, _ = reference.saliency(hf, x.input_ids, tx)      # saliency is the LeaF saliency
    torch.testing.assert_close(got["saliency"][0], expected_saliency, atol=1e-6, rtol=1e-5)
    old = attribute_all(model, [x.input_ids], [tx], ["grad_norm", "grad_x_input"])  # leaf's first names, still read
    torch.testing.assert_close(old["grad_norm"][0], got["saliency"][0])
    torch.testing.assert_close(old["grad_x_input"][0], got["input_x_gradient"][0])


def test_integrated_gradients_is_complete_and_matches_plain_autograd(llama):
    model, hf = llama
    x, _, _, tx, _, _ = pair(model.tokenizer)
    (scores,), (details,) = attribute(model, [x.input_ids], [tx], "integrated_gradients", steps=64, batch_size=24,
                                      return_details=True)
    gap = details["f_input"] - details["f_baseline"]
    assert abs(gap) > 1e-3
    assert float(scores.sum()) == pytest.approx(gap, rel=0.02, abs=1e-4)   # completeness
    baseline = hf.get_input_embeddings().weight.detach().float().mean(0).expand(len(x.input_ids), -1)
    expected, f_x, f_b = reference.integrated_gradients(hf, x.input_ids, tx, baseline, steps=64)
    torch.testing.assert_close(scores, expected, atol=2e-6, rtol=1e-4)
    assert (f_x, f_b) == pytest.approx((details["f_input"], details["f_baseline"]), abs=1e-5)
    # more steps: closer to completeness (the midpoint rule converges)
    (coarse,) = attribute(model, [x.input_ids], [tx], "integrated_gradients", steps=2, batch_size=2)
    assert abs(float(coarse.sum()) - gap) >= abs(float(scores.sum()) - gap)
    with pytest.raises(LeafError, match="Unknown baseline"):
        attribute(model, [x.input_ids], [tx], "integrated_gradients", baseline="noise")


def test_attention_rollout_matches_a_hand_computation(llama):
    model, hf = llama
    x, _, _, tx, _, _ = pair(model.tokenizer)
    (scores,) = attribute(model, [x.input_ids], [tx], "attention_rollout")
    expected = reference.rollout(reference.attentions(hf, x.input_ids), tx)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_methods_are_listed_and_picked_by_name(llama):
    model, _ = llama
    x, _, _, tx, _, _ = pair(model.tokenizer)
    assert list_methods() == ["attention_rollout", "input_x_gradient", "integrated_gradients", "saliency"]
    with pytest.raises(LeafError, match="Available: attention_rollout, input_x_gradient"):
        attribute(model, [x.input_ids], [tx], "lime")
    default = attribute(model, [x.input_ids], [tx])
    torch.testing.assert_close(default[0], attribute(model, [x.input_ids], [tx], "saliency")[0])


def test_head_focus_is_the_share_of_instruction_attention_on_confounders(llama):
    model, hf = llama
    x, _, _, _, _, pruned = pair(model.tokenizer)
    (a, b), = pruned
    confounder = (x.offsets[:, 0] < b) & (x.offsets[:, 1] > a) & x.prompt_mask
    (focus,) = head_focus(model, [x.input_ids], [x.response_mask], [x.prompt_mask], [confounder])
    probs = reference.attentions(hf, x.input_ids)
    instruction = x.prompt_mask.clone()
    instruction[0] = False                                            # the sink is excluded
    expected = reference.mass(probs, x.response_mask, confounder) / reference.mass(probs, x.response_mask,
                                                                                   instruction)
    assert focus.shape == (model.arch.num_layers, model.arch.num_heads)
    torch.testing.assert_close(focus, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(LeafError, match="outside its instruction_mask"):
        head_focus(model, [x.input_ids], [x.response_mask], [x.prompt_mask], [x.response_mask])


def test_research_calls_leave_no_trace_even_when_they_raise(llama, monkeypatch):
    import leaf.hooks.reductions as reductions

    model, _ = llama
    hf = model.hf_model
    x, xs, alignment, tx, ts, pruned = pair(model.tokenizer)
    hooks_before = _hook_count(hf)
    with torch.no_grad():
        before = hf(x.input_ids[None]).logits

    def check():
        assert _hook_count(hf) == hooks_before
        assert not hf.training and all(p.grad is None for p in hf.parameters())
        with torch.no_grad():
            assert torch.equal(hf(x.input_ids[None]).logits, before)

    def broken(logits, ids, mask):
        raise RuntimeError("metric bug")

    for component in ("resid", "head"):
        with pytest.raises(RuntimeError, match="metric bug"):
            patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, component=component, metric=broken)
        check()
    monkeypatch.setattr(reductions, "mean_nll", broken)
    with pytest.raises(RuntimeError, match="metric bug"):
        attribute(model, [x.input_ids], [tx], "integrated_gradients", steps=2)
    check()
    monkeypatch.undo()
    patching_sweep(model, x.input_ids, xs.input_ids, alignment, tx, component="mlp")
    attribute_all(model, [x.input_ids], [tx], list_methods(), options={"integrated_gradients": {"steps": 4}})
    confounder = x.prompt_mask & ~torch.isin(torch.arange(len(x.input_ids)), torch.tensor(
        [i for i, _ in alignment.pairs]))
    head_focus(model, [x.input_ids], [x.response_mask], [x.prompt_mask], [confounder])
    check()
    assert hf.config._attn_implementation == "sdpa"


def test_heatmap_png_writes_a_picture_atomically(tmp_path):
    matrix = torch.tensor([[0.1, float("nan"), -0.3], [0.0, 0.2, 0.05]])
    path = heatmap_png(matrix, tmp_path / "maps" / "m.png", title="t", xlabel="position", ylabel="layer",
                       xticklabels=["a", "b", "c"], yticklabels=["0", "1"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["m.png"]   # no temporary file left behind


def test_a_target_mask_that_includes_token_0_and_sliding_caches(llama):
    """Token 0 in the mask (nothing predicts it, the metric skips it) must not confuse the prefix reuse; a cache
    with a sliding-window layer turns the reuse off instead of failing."""
    from types import SimpleNamespace

    from leaf.hooks.patching import _croppable

    model, _ = llama
    x, xs, alignment, _, _, _ = pair(model.tokenizer)
    everything = torch.ones(len(x.input_ids), dtype=torch.bool)
    reused = patching_sweep(model, x.input_ids, xs.input_ids, alignment, everything, batch_size=16)
    full = patching_sweep(model, x.input_ids, xs.input_ids, alignment, everything, batch_size=16,
                          reuse_prefix=False)
    torch.testing.assert_close(reused.effect, full.effect, atol=1e-6, rtol=0, equal_nan=True)
    assert _croppable(SimpleNamespace(is_croppable=True, layers=[SimpleNamespace(is_sliding=False)]))
    assert not _croppable(SimpleNamespace(is_croppable=True, layers=[SimpleNamespace(is_sliding=True)]))
