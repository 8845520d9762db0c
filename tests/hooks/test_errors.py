"""Bad input gets a LeafError that says what is wrong and how to fix it."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

from leaf.errors import LeafError
from leaf.hooks import HookPlan, attention_mass, load_model, run, token_saliency


def test_missing_path(tmp_path):
    with pytest.raises(LeafError, match="does not exist.*local folder"):
        load_model(tmp_path / "nope")


def test_folder_without_config_or_weights(tmp_path, model_dirs):
    with pytest.raises(LeafError, match="no config.json"):
        load_model(tmp_path)
    shutil.copy(f"{model_dirs['llama']}/config.json", tmp_path / "config.json")
    with pytest.raises(LeafError, match="no weights"):
        load_model(tmp_path)


def test_non_causal_checkpoint(tmp_path):
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(LeafError, match="BertForMaskedLM checkpoint.*not a causal language model"):
        load_model(tmp_path)


def test_pickle_only_checkpoint_needs_the_opt_in(tmp_path, model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    folder = tmp_path / "pickled"
    shutil.copytree(model_dirs["llama"], folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(LeafError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=True"):
        load_model(folder)
    loaded = load_model(folder, allow_pickle=True)
    ids = torch.tensor([[256, 65, 66]])
    with torch.no_grad():
        assert torch.equal(loaded.hf_model(ids).logits, model(ids).logits)


def test_hub_id_that_cannot_be_fetched_offline():
    with pytest.raises(LeafError, match="Could not read the config of 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def test_unknown_dtype(model_dirs):
    with pytest.raises(LeafError, match="Unknown dtype 'float8'. Available"):
        load_model(model_dirs["llama"], dtype="float8")


@pytest.fixture(scope="module")
def llama(model_dirs):
    return load_model(model_dirs["llama"])


def test_empty_sample(llama):
    with pytest.raises(LeafError, match="Sample 1 is empty"):
        token_saliency(llama, [[256, 65, 66], []], [[0, 1, 1], []])


def test_over_long_sample(llama):
    too_long = [65] * (llama.max_length + 1)
    with pytest.raises(LeafError, match=f"Sample 0 has {llama.max_length + 1} tokens but the model accepts at most "
                                        f"{llama.max_length}"):
        token_saliency(llama, [too_long], [[0] + [1] * llama.max_length])


def test_target_mask_that_selects_nothing(llama):
    with pytest.raises(LeafError, match="target_mask of sample 0 selects no token"):
        token_saliency(llama, [[256, 65, 66]], [[0, 0, 0]])


def test_target_mask_on_token_zero_or_of_the_wrong_length(llama):
    with pytest.raises(LeafError, match="marks token 0"):
        token_saliency(llama, [[256, 65, 66]], [[1, 1, 1]])
    with pytest.raises(LeafError, match="has 2 entries but the sample has 3 tokens"):
        token_saliency(llama, [[256, 65, 66]], [[0, 1]])


def test_a_single_sequence_instead_of_a_list(llama):
    with pytest.raises(LeafError, match="not a single sequence"):
        token_saliency(llama, [256, 65, 66], [[0, 1, 1]])


def test_gradient_without_target_mask_and_unknown_names(llama):
    with pytest.raises(LeafError, match="need target_mask"):
        run(llama, [[256, 65, 66]], HookPlan(saliency="grad"))
    with pytest.raises(LeafError, match="Unknown saliency method 'integrated'"):
        HookPlan(saliency="integrated")
    with pytest.raises(LeafError, match="Unknown norm 'linf'"):
        HookPlan(saliency="grad", norm="linf")
    with pytest.raises(LeafError, match="needs both query_mask and key_masks"):
        attention_mass(llama, [[256, 65, 66]], [[0, 1, 1]], None)
