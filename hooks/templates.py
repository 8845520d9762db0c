"""A prompt/response pair as a model sees it: rendered with the tokenizer's chat template (or as plain text),
tokenized with character offsets, with the prompt, response and special-token masks every hook and stage uses.

`render_prompt_response` / `render_head` give the text and where the prompt and response lie in it;
`encode_text` / `encode_prompt_response` tokenize it (`EncodedSample`); `tokens_in` selects the tokens of a
character span. Masks come from offsets, so they are exact for any tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from leaf.errors import LeafError


@dataclass
class EncodedSample:
    """One prompt/response pair rendered and tokenized, with the masks hooks take and character offsets."""

    text: str
    input_ids: torch.Tensor       # (T,)
    offsets: torch.Tensor         # (T, 2) character spans of each token in `text`
    prompt_mask: torch.Tensor     # (T,) tokens inside the prompt's text
    response_mask: torch.Tensor   # (T,) tokens inside the response's text
    special_mask: torch.Tensor    # (T,) special/template tokens (BOS, role markers): never content
    prompt_span: tuple[int, int]
    response_span: tuple[int, int]


def render_prompt_response(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, *,
                           chat_template: bool = True) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Render (prompt, response) as one user/assistant exchange: (text, prompt char span, response char span).

    With chat_template=True the tokenizer's chat template renders it (the tokenizer must have one); with False the
    text is `bos + prompt + "\\n" + response`.
    """
    if not prompt:
        raise LeafError("The prompt is empty: every sample needs an instruction/question text.")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise LeafError(f"The tokenizer of {tokenizer.name_or_path!r} has no chat template. Pass "
                            "chat_template=False to join prompt and response with a newline, or use an instruct "
                            "model's tokenizer.")
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        if not text.startswith(head):
            raise LeafError("The chat template does not render the prompt with a generation prompt as a prefix of the "
                            "full exchange, so the response position is ambiguous. Use chat_template=False.")
        prompt_start = head.rfind(prompt)  # the user turn comes last in the head (a system prompt may come first)
        response_start = text.find(response, len(head)) if response else len(head)
    else:
        head = (tokenizer.bos_token or "") + prompt + "\n"
        text = head + response
        prompt_start, response_start = len(tokenizer.bos_token or ""), len(head)
    if prompt_start < 0 or response_start < 0:
        raise LeafError("The chat template changed the prompt or response text (e.g. stripped whitespace), so their "
                        "tokens cannot be located. Strip the texts first or use chat_template=False.")
    return text, (prompt_start, prompt_start + len(prompt)), (response_start, response_start + len(response))


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, prompt_span: tuple[int, int],
                response_span: tuple[int, int]) -> EncodedSample:
    """Tokenize an already rendered text with character offsets; masks from the prompt/response char spans.

    Masks come from offsets, so they are exact for any tokenizer, including ones whose tokens straddle the
    prompt/response boundary (such tokens count as neither).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = torch.tensor(enc["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    special_ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    special = torch.tensor([int(i) in special_ids for i in ids.tolist()], dtype=torch.bool)

    return EncodedSample(text=text, input_ids=ids, offsets=offsets,
                         prompt_mask=tokens_in(offsets, special, prompt_span),
                         response_mask=tokens_in(offsets, special, response_span), special_mask=special,
                         prompt_span=prompt_span, response_span=response_span)


def tokens_in(offsets: torch.Tensor, special: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """(T,) bool: non-special tokens lying wholly inside the character span."""
    return (offsets[:, 0] >= span[0]) & (offsets[:, 1] <= span[1]) & (offsets[:, 1] > offsets[:, 0]) & ~special


def render_head(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat_template: bool = True) -> str:
    """The text a model continues to answer `prompt`: up to and including the generation prompt."""
    text, _, response_span = render_prompt_response(tokenizer, prompt, "", chat_template=chat_template)
    return text[: response_span[0]]


def encode_prompt_response(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, *,
                           chat_template: bool = True) -> EncodedSample:
    """Render (prompt, response) as one user/assistant exchange and tokenize it with character offsets."""
    text, prompt_span, response_span = render_prompt_response(tokenizer, prompt, response,
                                                              chat_template=chat_template)
    return encode_text(tokenizer, text, prompt_span, response_span)
