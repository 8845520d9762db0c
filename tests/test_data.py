"""Dataset loading: every format, default field names, and errors that name the problem."""

import json

import pytest

from leaf.data import load_records, to_samples
from leaf.errors import LeafError

ROWS = [{"question": "What is 2+3?", "solution": "2+3 = 5\n#### 5", "id": "a"},
        {"question": "What is 4*5?", "solution": "4*5 = 20\n#### 20", "id": "b"}]


def _write(tmp_path, suffix):
    import datasets

    path = tmp_path / f"data{suffix}"
    ds = datasets.Dataset.from_list(ROWS)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        ds.to_csv(str(path), index=False)
    elif suffix == ".parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", "_saved"])
def test_every_format_loads_the_same_samples(tmp_path, suffix):
    samples = to_samples(load_records(_write(tmp_path, suffix)))
    assert [(s.id, s.prompt, s.response) for s in samples] == [(r["id"], r["question"], r["solution"]) for r in ROWS]


def test_field_conventions():
    rows = [{"instruction": "Add.", "input": "2 and 3", "output": "5"}]
    [s] = to_samples(rows)
    assert s.prompt == "Add.\n\n2 and 3" and s.response == "5" and s.id == "0"
    [s] = to_samples([{"prompt": "p", "response": "r"}])
    assert (s.prompt, s.response) == ("p", "r")
    [s] = to_samples([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    assert (s.prompt, s.response) == ("q", "a")
    [s] = to_samples([{"q": "x", "a": "y"}], prompt_field="q", response_field="a")
    assert (s.prompt, s.response) == ("x", "y")


def test_missing_field_names_what_exists():
    with pytest.raises(LeafError, match="no response field: looked for output, solution.*it has question, text"):
        to_samples([{"question": "q", "text": "t"}])
    with pytest.raises(LeafError, match="has no field 'answer'"):
        to_samples([{"question": "q", "solution": "s"}], response_field="answer")


def test_empty_file_and_malformed_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LeafError, match="is empty"):
        load_records(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "x", "solution": \n')
    with pytest.raises(LeafError, match="line 2 is not valid JSON"):
        load_records(bad)
    with pytest.raises(LeafError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(LeafError, match="Unknown data format '.txt'"):
        (tmp_path / "x.txt").write_text("hi")
        load_records(tmp_path / "x.txt")


def test_multi_turn_messages_are_refused_with_the_roles_found():
    with pytest.raises(LeafError, match=r"found roles \['system', 'user', 'assistant'\]"):
        to_samples([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "a"}]}])
