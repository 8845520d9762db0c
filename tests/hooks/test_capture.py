"""Module output/gradient capture against plain forward hooks and autograd."""

import pytest
import torch

from leaf.errors import LeafError
from leaf.hooks import capture, load_model
from tests.hooks import reference
from tests.tolerances import MODEL_ATOL, MODEL_RTOL


def test_capture_any_module_output_and_gradient(model_dirs, family, encoded):
    model = load_model(model_dirs[family])
    names = [model.arch.layer_path(0), f"{model.arch.layer_path(1)}.mlp"]
    results = capture(model, [e.input_ids for e in encoded], outputs=names, grads=names,
                      target_mask=[e.response_mask for e in encoded], batch_size=3)
    ref_model = reference.eager_model(model_dirs[family])
    for sample, result in zip(encoded, results):
        for name in names:
            want_out, want_grad = reference.module_output_and_grad(ref_model, sample.input_ids,
                                                                   sample.response_mask, name)
            torch.testing.assert_close(result.outputs[name], want_out, atol=MODEL_ATOL, rtol=MODEL_RTOL)
            torch.testing.assert_close(result.grads[name], want_grad, atol=MODEL_ATOL, rtol=MODEL_RTOL)


def test_capture_reads_modules_in_execution_order_not_the_order_asked(model_dirs, samples):
    model = load_model(model_dirs["llama"])
    # rotary_emb is registered after the layers but runs before them; ask in the "wrong" order.
    names = ["model.norm", "model.layers.1", "model.rotary_emb", "model.layers.0"]
    [result] = capture(model, [samples[1].input_ids], outputs=names)
    assert set(result.outputs) == set(names)


def test_unknown_module_names_the_fix(model_dirs, samples):
    model = load_model(model_dirs["gpt2"])
    with pytest.raises(LeafError, match="model.layers.0 do not run"):
        capture(model, [samples[0].input_ids], outputs=["model.layers.0"])
