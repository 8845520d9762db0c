"""The teacher's top-k log-probs from either engine (leaf.serve.engines `top_logprobs`, what `leaf distill` fills its
teacher cache with): HF forward passes and vLLM's prompt_logprobs, each against a plain transformers forward with
torch's log_softmax and topk, at two temperatures and with the vocabulary cut to the student's, on a tiny model and
on SmolLM2. The top-k ids must be the same wherever the k-th and (k+1)-th log-probs lie further apart than the
tolerance (closer ones may swap within float32 rounding), and the log-probs within tests/tolerances.logprob_atol."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.distill.teacher_cache import cache_positions
from leaf.hooks import encode_prompt_response, load_model
from leaf.models.tiny import build_tiny_model
from leaf.serve.engines import HFEngine
from tests.conftest import PROMPTS
from tests.tolerances import logprob_atol

vllm = pytest.importorskip("vllm")
K = 8


def _sequences(path: str, pairs) -> tuple[list[list[int]], list[list[int]]]:
    tok = AutoTokenizer.from_pretrained(path)
    encoded = [encode_prompt_response(tok, p, r) for p, r in pairs]
    return [e.input_ids.tolist() for e in encoded], [cache_positions(e.response_mask.tolist()) for e in encoded]


def _reference(path: str, prompts, positions, k: int, temperature: float, vocab: int):
    """Plain transformers: full logits, cut to `vocab`, divided by t, log_softmax, topk (k + 1 to see the boundary);
    and the largest |logit| in play (the scale of the tolerance)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out, scale = [], 0.0
    for ids, keep in zip(prompts, positions):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, keep, :vocab]
        scale = max(scale, float(logits.abs().max()))
        top = (logits / temperature).log_softmax(-1).topk(k + 1, dim=-1)
        out.append((top.values, top.indices))
    return out, scale


def _check(got, reference, k: int, atol: float, vocab: int) -> int:
    """Each sequence's (n, k) log-probs and ids against the reference; returns how many positions had their ids
    compared (an untied boundary)."""
    compared = 0
    for (logp, ids), (ref_logp, ref_ids) in zip(got, reference):
        assert logp.shape == ids.shape == (ref_logp.shape[0], k) and logp.dtype == torch.float32
        assert int(ids.max()) < vocab
        torch.testing.assert_close(logp.sort(-1, descending=True).values, ref_logp[:, :k], rtol=0, atol=atol)
        clear = ref_logp[:, k - 1] - ref_logp[:, k] > 2 * atol
        assert torch.equal(ids[clear].sort(-1).values, ref_ids[clear, :k].sort(-1).values)
        compared += int(clear.sum())
    return compared


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model("llama", tmp_path_factory.mktemp("engine") / "teacher", seed=3))


def _both_engines(path: str, prompts, positions, *, vocab: int, layers: int, width: int):
    from leaf.serve.engines import VLLMEngine

    engine = VLLMEngine(path, engine_args={"max_logprobs": K},
                        max_model_len=max(map(len, prompts)) + 1)
    hf = HFEngine(load_model(path))
    try:
        for temperature in (1.0, 2.0):
            reference, scale = _reference(path, prompts, positions, K, temperature, vocab)
            atol = logprob_atol(layers, width, scale / temperature)
            total = sum(map(len, positions))
            for got in (hf.top_logprobs(prompts, positions, K, temperature=temperature, vocab=vocab),
                        engine.top_logprobs(prompts, positions, K, temperature=temperature, vocab=vocab)):
                assert _check(got, reference, K, atol, vocab) >= total // 2  # most boundaries are untied
        # the engine is left as it was: greedy generation afterwards is vLLM's own (temperature and cut undone)
        assert engine.generate([prompts[0][:8]], [4])[0][0].token_ids == hf.generate([prompts[0][:8]], [4])[0][0].token_ids
    finally:
        engine.close()


def test_vllm_and_hf_give_the_reference_top_k_on_a_tiny_model(tiny):
    """The tiny model's logit matrix is padded past its tokenizer: cut to the tokenizer's size, as for a student
    whose matrix is not padded."""
    prompts, positions = _sequences(tiny, PROMPTS)
    config = AutoModelForCausalLM.from_pretrained(tiny).config
    vocab = len(AutoTokenizer.from_pretrained(tiny))
    assert vocab < config.vocab_size
    _both_engines(tiny, prompts, positions, vocab=vocab, layers=config.num_hidden_layers,
                  width=max(config.hidden_size, config.intermediate_size))


@pytest.mark.real
def test_vllm_and_hf_give_the_reference_top_k_on_smollm2(smollm2, gsm8):
    import json

    rows = [json.loads(line) for line in gsm8.read_text().splitlines()][:3]
    prompts, positions = _sequences(smollm2, [(r["question"], r["solution"]) for r in rows])
    config = AutoModelForCausalLM.from_pretrained(smollm2).config
    _both_engines(smollm2, prompts, positions, vocab=config.vocab_size, layers=config.num_hidden_layers,
                  width=max(config.hidden_size, config.intermediate_size))


def test_a_vllm_engine_refuses_more_log_probs_than_it_was_started_for(tiny):
    from leaf.errors import LeafError
    from leaf.serve.engines import VLLMEngine

    engine = VLLMEngine(tiny, engine_args={"max_logprobs": 4}, max_model_len=64)
    try:
        with pytest.raises(LeafError, match="at most 4 log-probs"):
            engine.top_logprobs([[1, 2, 3]], [[0, 1]], 8)
        with pytest.raises(LeafError, match="past the 2 logits kept"):
            engine.top_logprobs([[1, 2, 3]], [[0, 1]], 2, vocab=2)
    finally:
        engine.close()
