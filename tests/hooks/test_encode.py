"""encode_prompt_response: the token masks cover exactly the prompt and the response text."""

import pytest
import torch
from transformers import AutoTokenizer

from leaf.errors import LeafError
from leaf.hooks import encode_prompt_response
from leaf.models.tiny import byte_tokenizer


def _text_of(enc, mask):
    # multi-byte characters: several byte tokens share one offset span, so take each span once
    spans = dict.fromkeys((int(s), int(e)) for s, e in enc.offsets[mask])
    return "".join(enc.text[s:e] for s, e in spans)


@pytest.mark.parametrize("chat_template", [True, False])
def test_masks_cover_exactly_the_prompt_and_response(chat_template):
    tok = byte_tokenizer()
    prompt, response = "Zoë has 3 cats. How many?", "She has 3 cats.\n#### 3"
    enc = encode_prompt_response(tok, prompt, response, chat_template=chat_template)
    assert _text_of(enc, enc.prompt_mask) == prompt
    assert _text_of(enc, enc.response_mask) == response
    assert enc.text[slice(*enc.prompt_span)] == prompt and enc.text[slice(*enc.response_span)] == response
    assert not (enc.prompt_mask & enc.response_mask).any()
    assert enc.input_ids[0] == tok.bos_token_id and enc.special_mask[0]
    assert not (enc.special_mask & (enc.prompt_mask | enc.response_mask)).any()
    assert torch.equal(enc.input_ids, torch.tensor(tok(enc.text, add_special_tokens=False).input_ids))


def test_template_markers_are_special_tokens(model_dirs):
    tok = AutoTokenizer.from_pretrained(model_dirs["qwen2"])
    enc = encode_prompt_response(tok, "a", "b")
    markers = [tok.convert_ids_to_tokens(int(i)) for i in enc.input_ids[enc.special_mask]]
    assert markers == ["<|bos|>", "<|user|>", "<|end|>", "<|assistant|>", "<|end|>"]


def test_tokenizer_without_chat_template_says_what_to_do():
    tok = byte_tokenizer()
    tok.chat_template = None
    with pytest.raises(LeafError, match="has no chat template. Pass chat_template=False"):
        encode_prompt_response(tok, "a", "b")
    with pytest.raises(LeafError, match="prompt is empty"):
        encode_prompt_response(tok, "", "b", chat_template=False)
