"""How each model of a teacher/student pair sees a sample, and how positions in one model's text map to the other's.

`leaf analyze --template own` (the default) scores each model on exactly the text its own tokenizer and chat template
produce, BOS included: Gemma's and Llama 3's templates start with `<bos>` / `<|begin_of_text|>`, SmolLM2's ChatML
does not. `--template student|teacher` renders one model's template for both, and `none` plain text
(BOS + prompt + newline + response); the other model then still gets its own BOS first when it uses one. The
prompt and the response are the same strings in every rendering, so a character span inside either maps from one
rendering to the other by a shift (`map_span`), and so do token offsets (`map_offsets`): that is how the teacher's
scores reach the student's tokens when the two templates differ.

An answer prefix (code: the reference's "Below is a Python script ...:\n```python\n", from
leaf/templates/code_answer_prefix.txt) is written at the start of the assistant turn, between the generation prompt
and the response: the model answers after it, so it belongs to the head, to neither the prompt nor the response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEMPLATES = ("own", "student", "teacher", "none")


@dataclass(frozen=True)
class Rendering:
    text: str
    prompt: tuple[int, int]     # character span of the prompt in text
    response: tuple[int, int]   # character span of the response in text

    @property
    def head(self) -> str:
        """The text a model continues to answer the prompt (up to the generation prompt)."""
        return self.text[: self.response[0]]

    def shifted(self, by: int) -> "Rendering":
        return Rendering(self.text, (self.prompt[0] + by, self.prompt[1] + by),
                         (self.response[0] + by, self.response[1] + by))


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def needs_bos(tokenizer) -> bool:
    """Whether the model's own inputs start with its BOS token: the tokenizer adds it, or the chat template writes it
    (Llama 3, Gemma: `{{ bos_token }}`). A template that merely starts with the same marker (SmolLM2's ChatML, whose
    bos_token is `<|im_start|>`) does not count."""
    if not getattr(tokenizer, "bos_token", None):
        return False
    template = getattr(tokenizer, "chat_template", None) or ""
    return bool(getattr(tokenizer, "add_bos_token", False)) or "bos_token" in template


def prefix_part(prefix: str, response: str) -> str:
    """What of an answer prefix goes before `response`: all of it, less its closing lines when the response starts
    with them (a prefix ending in "```python\n" before a response that opens its own fence gets one fence)."""
    for k, char in enumerate(prefix):
        if (k == 0 or prefix[k - 1] == "\n") and response.startswith(prefix[k:]) and prefix[k:]:
            return prefix[:k]
    return prefix


def render(tokenizer, prompt: str, response: str, *, chat_template: bool, answer_prefix: str = "") -> Rendering:
    """One rendering (leaf.hooks.render_prompt_response) with the answer prefix before the response."""
    from leaf.hooks import render_prompt_response

    head = prefix_part(answer_prefix, response)
    text, p, r = render_prompt_response(tokenizer, prompt, head + response, chat_template=chat_template)
    return Rendering(text, p, (r[0] + len(head), r[1]))


def own_rendering(tokenizer, prompt: str, response: str, answer_prefix: str = "") -> Rendering:
    """The model's own view: its chat template, or plain text (BOS + prompt + newline + response) without one."""
    return render(tokenizer, prompt, response, chat_template=has_chat_template(tokenizer),
                  answer_prefix=answer_prefix)


def with_bos(tokenizer, rendering: Rendering) -> Rendering:
    """Another model's rendering with this model's BOS put first when it uses one and the text lacks it."""
    bos = getattr(tokenizer, "bos_token", None)
    if not needs_bos(tokenizer) or rendering.text.startswith(bos):
        return rendering
    shifted = rendering.shifted(len(bos))
    return Rendering(bos + rendering.text, shifted.prompt, shifted.response)


class Renderer:
    """The texts of one analyze run: `render(who, prompt, response)` for who in {"teacher", "student"}."""

    def __init__(self, mode: str, teacher_tokenizer, student_tokenizer=None, answer_prefix: str = "") -> None:
        self.mode, self.answer_prefix = mode, answer_prefix
        self.tokenizers = {"teacher": teacher_tokenizer, "student": student_tokenizer or teacher_tokenizer}

    def render(self, who: str, prompt: str, response: str) -> Rendering:
        own, prefix = self.tokenizers[who], self.answer_prefix
        if self.mode == "own":
            return own_rendering(own, prompt, response, prefix)
        if self.mode == "none":
            return render(own, prompt, response, chat_template=False, answer_prefix=prefix)
        template = self.tokenizers[self.mode]
        rendering = render(template, prompt, response, chat_template=True, answer_prefix=prefix)
        return with_bos(own, rendering) if own is not template else rendering

    def head(self, who: str, prompt: str) -> str:
        return self.render(who, prompt, "").head

    def notes(self, prompt: str, response: str) -> list[str]:
        """What a user should know about how the two models see the data (from the first sample)."""
        notes = []
        for who, tokenizer in self.tokenizers.items():
            if self.mode == "own" and not has_chat_template(tokenizer):
                notes.append(f"the {who} has no chat template: it is scored on plain text (BOS + prompt + newline + "
                             "response)")
        if self.mode == "own" and self.tokenizers["teacher"] is not self.tokenizers["student"]:
            texts = {who: self.render(who, prompt, response).text for who in self.tokenizers}
            if texts["teacher"] != texts["student"]:
                notes.append("teacher and student each see their own chat template's rendering; scores are aligned "
                             "through the prompt and response text (--template student|teacher|none for one text)")
        return notes


@dataclass(frozen=True)
class RecordedTemplate:
    """How `leaf analyze` rendered its records for the student, for the stages after it (distill, inspect): its
    --template and, when that is the teacher's template, the analyze teacher's tokenizer. `student` names the
    student analyze rendered for (for messages)."""

    mode: str
    teacher_tokenizer: object | None = None
    student: str = ""

    def renderer(self, student_tokenizer, answer_prefix: str = "") -> Renderer:
        return Renderer(self.mode, self.teacher_tokenizer or student_tokenizer, student_tokenizer,
                        answer_prefix=answer_prefix)

    def original(self, record, student_tokenizer, what: str) -> Rendering:
        """The rendering analyze recorded for `record` (its text and spans), checked against what this student's
        tokenizer gives under the same template: LeafError when they differ (another tokenizer or chat template)."""
        from leaf.errors import LeafError

        recorded = Rendering(record.text, tuple(record.prompt_span), tuple(record.response_span))
        again = self.renderer(student_tokenizer, record.answer_prefix or "").render("student", record.prompt,
                                                                                  record.response)
        if again != recorded:
            raise LeafError(
                f"Sample {record.id} of {what} was rendered by leaf analyze (--template {self.mode}, student "
                f"{self.student or '?'}) as a text this student's tokenizer does not give: its tokenizer or chat "
                "template differs from the one analyze rendered for. Distil the student analyze ran with, or rerun "
                "leaf analyze with this --student.")
        return recorded


def recorded_template(summary: dict, *, trust_remote_code: bool = False) -> RecordedTemplate:
    """The RecordedTemplate of an analyze folder from its summary.json (its config): the teacher's tokenizer is
    loaded only for --template teacher."""
    from leaf.errors import LeafError

    config = summary.get("config") or {}
    mode = config.get("template", "own")
    teacher = None
    if mode == "teacher":
        from leaf.hooks.loading import load_tokenizer

        try:
            teacher = load_tokenizer(config["teacher"], trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise LeafError(f"The analyze folder was rendered with the teacher's chat template (--template teacher), "
                            f"but that teacher's tokenizer ({config.get('teacher')!r}) does not load here ({exc}); "
                            "make it available, or rerun leaf analyze with --template own.") from None
    return RecordedTemplate(mode, teacher, str(config.get("student", "")))


def map_span(span: tuple[int, int], src: Rendering, dst: Rendering) -> tuple[int, int]:
    """A character span inside src's prompt or response -> the same characters in dst."""
    for a, b in ((src.prompt, dst.prompt), (src.response, dst.response)):
        if a[0] <= span[0] and span[1] <= a[1]:
            return span[0] - a[0] + b[0], span[1] - a[0] + b[0]
    raise ValueError(f"span {span} lies neither inside the prompt {src.prompt} nor the response {src.response}")


def map_offsets(offsets: torch.Tensor, src: Rendering, dst: Rendering) -> torch.Tensor:
    """(T, 2) token offsets in src's text -> dst's text. Tokens inside the prompt or the response shift with it;
    template tokens (outside both) become empty (0, 0): they have no counterpart in the other text."""
    out = torch.zeros_like(offsets)
    for a, b in ((src.prompt, dst.prompt), (src.response, dst.response)):
        inside = (offsets[:, 0] >= a[0]) & (offsets[:, 1] <= a[1]) & (offsets[:, 1] > offsets[:, 0])
        out[inside] = offsets[inside] - a[0] + b[0]
    return out
