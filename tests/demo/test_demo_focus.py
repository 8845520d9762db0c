"""The demo's per-head attention focus against plain `output_attentions`, and the head choice on validation data."""

import pytest
import torch

from leaf.demo.focus import choose_head, distractor_shares, focus_summary
from leaf.demo.task import generate
from leaf.demo.train import STUDENT_SIZE, new_model
from tests.hooks.reference import instruction_and_confounders


def test_distractor_shares_match_output_attentions_at_number_positions(tmp_path):
    from transformers import AutoModelForCausalLM

    from leaf.hooks import encode_prompt_response, load_model

    folder = new_model(tmp_path / "m", STUDENT_SIZE, seed=3)
    problems = [p for p in generate(12, seed=4, distractors=(1, 2))][:3]
    shares = distractor_shares(load_model(str(folder)), problems, batch_size=2)     # (N, L, H)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    tok = load_model(str(folder)).tokenizer
    for n, p in enumerate(problems):
        enc = encode_prompt_response(tok, p.question, p.solution)
        with torch.no_grad():
            attentions = hf(enc.input_ids[None], output_attentions=True).attentions
        names = tok.convert_ids_to_tokens(enc.input_ids.tolist())
        queries = [t for t in range(len(names) - 1) if enc.response_mask[t + 1] and names[t + 1].isdigit()]
        assert queries, "every solution states numbers"
        instruction, distractor = instruction_and_confounders(enc, p.distractor_spans)
        for layer, att in enumerate(attentions):
            rows = att[0][:, queries]                                   # (H, Q, T)
            on_question = rows[..., instruction].sum((-1, -2))
            on_distractor = rows[..., distractor].sum((-1, -2))
            assert shares[n, layer] == pytest.approx(on_distractor / on_question, abs=1e-5)


def test_choose_head_picks_the_head_whose_distractor_reading_goes_with_errors():
    shares = torch.full((6, 2, 3), 0.2)
    wrong = [True, True, True, False, False, False]
    shares[:3, 1, 2] = 0.6          # layer 1 head 2 reads the distractor on the problems answered wrongly
    shares[:, 0, 0] = 0.9           # a head that always reads it (no contrast) is not chosen
    chosen = choose_head(shares, [not w for w in wrong])
    assert (chosen.layer, chosen.head) == (1, 2)
    assert chosen.wrong_share == pytest.approx(0.6) and chosen.right_share == pytest.approx(0.2)
    summary = focus_summary(shares, chosen)
    assert summary["chosen_head"] == pytest.approx(1 - (0.6 * 3 + 0.2 * 3) / 6)
    assert summary["per_head"][0][0] == pytest.approx(0.1) and len(summary["per_layer"]) == 2
    # all right: nothing to contrast, the head that reads the distractors most
    assert (choose_head(shares, [True] * 6).layer, choose_head(shares, [True] * 6).head) == (0, 0)
