"""Span building, clean removal, and score alignment across tokenizers, on hand-made cases."""

import pytest
import torch

from leaf.hooks import encode_text
from leaf.spans import project, remove_spans, token_spans
from leaf.models.tiny import bpe_tokenizer, byte_tokenizer


def _enc(tok, text):
    return encode_text(tok, text, (0, len(text)), (len(text), len(text)))


def _flags_for(enc, text, words):
    """Flag the tokens inside the given words (by character position)."""
    flags = torch.zeros(len(enc.offsets), dtype=torch.bool)
    for word in words:
        start = text.index(word)
        flags |= (enc.offsets[:, 0] >= start) & (enc.offsets[:, 1] <= start + len(word)) & (
            enc.offsets[:, 1] > enc.offsets[:, 0])
    return flags


def test_adjacent_flags_and_bridged_whitespace_make_one_span():
    text = "Tom has a red hat today"
    enc = _enc(byte_tokenizer(), text)
    flags = _flags_for(enc, text, ["red", "hat"])
    spans = token_spans(flags, enc.offsets, text, enc.prompt_mask)
    assert [(text[a:b]) for a, b, _ in spans] == ["red hat"]
    assert len(spans[0][2]) == len("red hat")  # the bridged space belongs to the span


def test_an_unflagged_word_splits_spans_and_edges_work():
    text = "red and blue"
    enc = _enc(byte_tokenizer(), text)
    flags = _flags_for(enc, text, ["red", "blue"])   # first and last tokens of the text
    spans = token_spans(flags, enc.offsets, text, enc.prompt_mask)
    assert [text[a:b] for a, b, _ in spans] == ["red", "blue"]


def test_trailing_whitespace_is_not_part_of_a_span():
    text = "a red  "
    enc = _enc(byte_tokenizer(), text)
    spans = token_spans(_flags_for(enc, text, ["red"]), enc.offsets, text, enc.prompt_mask)
    assert [text[a:b] for a, b, _ in spans] == ["red"]


def test_multibyte_characters_keep_whole_characters():
    text = "Zoë’s café is big"
    enc = _enc(byte_tokenizer(), text)
    flags = _flags_for(enc, text, ["Zoë’s"])
    assert int(flags.sum()) == len("Zoë’s".encode())   # 8 byte tokens for 5 characters
    spans = token_spans(flags, enc.offsets, text, enc.prompt_mask)
    assert [text[a:b] for a, b, _ in spans] == ["Zoë’s"]


@pytest.mark.parametrize("text,remove,want", [
    ("Tom has 3 apples. His hat is red. He buys 2 more.", ["His hat is red."], "Tom has 3 apples. He buys 2 more."),
    ("His hat is red. Tom has 3 apples.", ["His hat is red."], "Tom has 3 apples."),
    ("Tom has 3 apples. His hat is red.", [" His hat is red."], "Tom has 3 apples."),
    ("Tom has a red hat.", ["red"], "Tom has a hat."),
    ("Tom has a red hat.", ["red hat"], "Tom has a."),
    ("Q?\nHis hat is red.\nHow many?", ["His hat is red."], "Q?\nHow many?"),
    ("Tom, who likes cats, has 3 apples.", ["who likes cats"], "Tom, has 3 apples."),
    ("Zoë’s café is big.", ["café "], "Zoë’s is big."),
    ("Tom has 3 apples, his hat is red.", ["his hat is red"], "Tom has 3 apples."),
    ("Para one.\n\nA distractor paragraph.\n\nPara three.", ["A distractor paragraph."],
     "Para one.\n\nPara three."),
    ("Tom (who is tall) has 3 apples.", ["who is tall"], "Tom has 3 apples."),
    ("x = 3, and it rained", ["and it rained"], "x = 3"),
    ("Tom has 3 apples.\nHis hat is red.", ["His hat is red."], "Tom has 3 apples."),
])
def test_removal_leaves_clean_text(text, remove, want):
    spans = [(text.index(r), text.index(r) + len(r)) for r in remove]
    out = remove_spans(text, spans)
    assert out == want
    assert "  " not in out and " ." not in out and " ," not in out


def test_removing_two_spans_at_once():
    text = "Tom has 3 apples. His hat is red. He buys 2 more. It is Monday."
    spans = [(text.index("His"), text.index("red.") + 4), (text.index("It is"), len(text))]
    assert remove_spans(text, spans) == "Tom has 3 apples. He buys 2 more."


def test_projection_is_identity_for_the_same_tokenizer():
    text = "Tom has 3 apples."
    enc = _enc(byte_tokenizer(), text)
    scores = torch.rand(len(enc.offsets))
    out = project(scores, enc.offsets, enc.prompt_mask, enc.offsets, enc.prompt_mask, len(text))
    torch.testing.assert_close(out[enc.prompt_mask], scores[enc.prompt_mask])


def test_identical_tokenizations_map_by_identity_even_inside_a_multibyte_character():
    """The byte tokenizer splits "é" into two tokens over the same character: through characters both would take the
    larger score; the identity keeps each its own (and 0 outside either mask)."""
    text = "Zoé has 3 apples."
    enc = _enc(byte_tokenizer(), text)
    shared = [i for i in range(len(enc.offsets)) if enc.offsets[i].tolist() == [2, 3]]
    assert len(shared) == 2                                  # é: two byte tokens, one character
    scores = torch.linspace(0.1, 0.9, len(enc.offsets))
    scores[shared[0]], scores[shared[1]] = 0.2, 0.8
    target = enc.prompt_mask.clone()
    target[0] = False
    out = project(scores, enc.offsets, enc.prompt_mask, enc.offsets.clone(), target, len(text))
    assert out[shared].tolist() == pytest.approx([0.2, 0.8])
    assert torch.equal(out, torch.where(enc.prompt_mask & target, scores, torch.zeros(())))
    # the path through characters (any other tokenization) gives both bytes the larger score
    through = project(scores, enc.offsets, enc.prompt_mask, enc.offsets[:-1], target[:-1], len(text))  # not identical
    assert through[shared].tolist() == pytest.approx([0.8, 0.8])


def test_projection_across_two_different_tokenizers_goes_through_characters():
    text = "Tom has 3 apples. Zoë’s hat"
    words, chars = _enc(bpe_tokenizer(), text), _enc(byte_tokenizer(), text)
    assert len(words.offsets) < len(chars.offsets)          # different tokenizations of the same text
    word_scores = torch.arange(len(words.offsets), dtype=torch.float32)
    on_chars = project(word_scores, words.offsets, words.prompt_mask, chars.offsets, chars.prompt_mask, len(text))
    for i in range(len(chars.offsets)):                      # each byte token gets its covering word's score
        a, b = chars.offsets[i].tolist()
        covering = [j for j in range(len(words.offsets))
                    if words.offsets[j, 0] <= a and b <= words.offsets[j, 1]]
        assert on_chars[i] == max(word_scores[j] for j in covering)
    back = project(on_chars, chars.offsets, chars.prompt_mask, words.offsets, words.prompt_mask, len(text))
    # and back again: each word gets the max over its characters, which is its own score unless it shares a
    # character with another token (a multi-byte character split across tokens: ë, ’), where it is the group's max
    for j in range(len(words.offsets)):
        a, b = words.offsets[j].tolist()
        sharing = [k for k in range(len(words.offsets)) if words.offsets[k, 0] < b and a < words.offsets[k, 1]]
        assert back[j] == max(word_scores[k] for k in sharing)
    assert sum(len(text[a:b]) == 1 and text[a:b] in "ë’" for a, b in words.offsets.tolist()) >= 2


def test_a_cut_inside_a_word_joins_the_halves_and_the_rest_is_untouched():
    text = "Marty  has 3 apples!? Yes."
    assert remove_spans(text, [(2, 3)]) == "Maty  has 3 apples!? Yes."   # only the cut is tidied
    assert remove_spans(text, []) == text


def test_spans_widen_to_whole_words_and_merge():
    from leaf.spans import grow_spans

    text = "Marty has 100 centimeters of ribbon."
    enc = _enc(byte_tokenizer(), text)
    # flag single characters: the 'r' of Marty, and an 'e' and an 'i' inside centimeters
    flags = (enc.offsets[:, 0] == text.index("r")) | (enc.offsets[:, 0] == text.index("ent")) | (
        enc.offsets[:, 0] == text.index("ime"))
    spans = token_spans(flags, enc.offsets, text, enc.prompt_mask)
    assert [text[a:b] for a, b, _ in spans] == ["r", "e", "i"]
    words = grow_spans(spans, text, enc.offsets, enc.prompt_mask, (0, len(text)), "word")
    assert [text[a:b] for a, b, _ in words] == ["Marty", "centimeters"]
    assert remove_spans(text, [(a, b) for a, b, _ in words]) == "has 100 of ribbon."
    assert words[0][2] == list(range(0, 5))


def test_spans_grow_to_clauses_and_sentences():
    from leaf.spans import grow_spans, piece_index, pieces

    text = "Tom has 4.5 cards, Eva has 6 cards. It is sunny! How many cards does Tom have?"
    assert [text[a:b] for a, b in pieces(text, (0, len(text)), "sentence")] == [
        "Tom has 4.5 cards, Eva has 6 cards.", "It is sunny!", "How many cards does Tom have?"]
    assert [text[a:b] for a, b in pieces(text, (0, len(text)), "clause")] == [
        "Tom has 4.5 cards,", "Eva has 6 cards.", "It is sunny!", "How many cards does Tom have?"]
    lines = "one\ntwo "
    assert [lines[a:b] for a, b in pieces(lines, (0, 8), "clause")] == ["one", "two"]
    enc = _enc(byte_tokenizer(), text)
    flags = enc.offsets[:, 0] == text.index("6")
    spans = token_spans(flags, enc.offsets, text, enc.prompt_mask)
    region = (0, len(text))
    clause = grow_spans(spans, text, enc.offsets, enc.prompt_mask, region, "clause")
    sentence = grow_spans(spans, text, enc.offsets, enc.prompt_mask, region, "sentence")
    assert [text[a:b] for a, b, _ in clause] == ["Eva has 6 cards."]
    assert [text[a:b] for a, b, _ in sentence] == ["Tom has 4.5 cards, Eva has 6 cards."]
    assert remove_spans(text, [c[:2] for c in clause]) == "Tom has 4.5 cards, It is sunny! How many cards does Tom have?"
    # two flags in one sentence merge into one span; flags in two sentences stay two
    both = enc.offsets[:, 0] == text.index("sunny")
    two = grow_spans(token_spans(flags | both, enc.offsets, text, enc.prompt_mask), text, enc.offsets,
                     enc.prompt_mask, region, "sentence")
    assert [text[a:b] for a, b, _ in two] == ["Tom has 4.5 cards, Eva has 6 cards.", "It is sunny!"]
    assert grow_spans(spans, text, enc.offsets, enc.prompt_mask, region, "token") == spans
    idx = enc.prompt_mask.nonzero().flatten()
    units = pieces(text, region, "sentence")
    owner = piece_index(text, enc.offsets, idx, units)
    assert owner[0] == 0 and owner[-1] == 2 and int(owner[idx.tolist().index(text.index("sunny"))]) == 1


def test_leading_space_tokens_belong_to_the_next_sentence():
    """Byte-level BPE puts the space before a word into its token (" Eva"): the token belongs to the sentence its
    word starts, both for --aggregate and for the tokens of a grown span."""
    from leaf.spans import grow_spans, piece_index, pieces

    text = "Tom has 4 cards. Eva has 6 pens. How many?"
    eva = text.index(" Eva")
    offsets = torch.tensor([[0, 3], [3, 7], [7, 9], [9, 15], [15, 16], [eva, eva + 4], [20, 24], [24, 26],
                            [26, 31], [31, 32], [32, 36], [36, 41], [41, 42]])
    assert text[eva:eva + 4] == " Eva"
    units = pieces(text, (0, len(text)), "sentence")
    owner = piece_index(text, offsets, torch.arange(len(offsets)), units)
    assert owner.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    candidates = torch.ones(len(offsets), dtype=torch.bool)
    grown = grow_spans([(24, 26, [7])], text, offsets, candidates, (0, len(text)), "sentence")
    assert [(text[a:b], tokens) for a, b, tokens in grown] == [("Eva has 6 pens.", [5, 6, 7, 8, 9])]
