"""leaf's GGUF header reader against the gguf package's GGUFReader, on files the gguf package writes."""

from __future__ import annotations

import numpy as np
import pytest

from leaf.errors import LeafError
from leaf.models.gguf_header import gguf_metadata

gguf = pytest.importorskip("gguf")

VALUES = {
    "test.uint8": ("uint8", 200), "test.int8": ("int8", -100), "test.uint16": ("uint16", 60000),
    "test.int16": ("int16", -30000), "test.uint32": ("uint32", 4_000_000_000), "test.int32": ("int32", -2_000_000_000),
    "test.float32": ("float32", 0.25), "test.uint64": ("uint64", 2**63 + 5), "test.int64": ("int64", -(2**62)),
    "test.float64": ("float64", 1 / 3), "test.true": ("bool", True), "test.false": ("bool", False),
    "test.string": ("string", "{% for m in messages %}ünï{{ m }}{% endfor %}"),
    "tokenizer.ggml.tokens": ("array", [f"tok{i}" for i in range(300)] + ["", "Ġé"]),
    "tokenizer.ggml.scores": ("array", [float(i) / 4 for i in range(50)]),
    "test.ints": ("array", [1, -2, 3]), "test.nested": ("array", [[1, 2], [3]]),
}


def _write(path, endianess):
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    for key, (kind, value) in VALUES.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_every_value_type_reads_as_gguf_reader_gives_it(tmp_path, endian):
    path = _write(tmp_path / "t.gguf", getattr(gguf.GGUFEndian, endian))
    reader = gguf.GGUFReader(str(path))
    keys = [*VALUES, "general.architecture"]
    ours = gguf_metadata(path, keys)
    assert ours.keys() == set(keys)
    for key in keys:
        want = reader.fields[key].contents()
        if key == "test.nested":  # GGUFReader flattens an array of arrays; the file holds [[1, 2], [3]]
            assert want == [1, 2, 3]
            continue
        assert ours[key] == want and type(ours[key]) is type(want), key
    assert ours["test.true"] is True and ours["test.uint64"] == 2**63 + 5       # not just equal to the reference
    assert ours["tokenizer.ggml.tokens"][-1] == "Ġé" and ours["test.nested"] == [[1, 2], [3]]
    # a key after the vocabulary: everything before it is skipped, not decoded; absent keys are left out
    assert gguf_metadata(path, ("test.nested", "absent.key")) == {"test.nested": [[1, 2], [3]]}


def test_a_file_that_is_not_gguf_or_cut_short_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "t.gguf", gguf.GGUFEndian.LITTLE)
    raw = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(raw[:300])                  # inside the vocabulary
    with pytest.raises(LeafError, match="cut short"):
        gguf_metadata(tmp_path / "cut.gguf", ("absent.key",))
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(LeafError, match="not a GGUF file"):
        gguf_metadata(tmp_path / "not.gguf", ("test.int8",))
    (tmp_path / "v1.gguf").write_bytes(raw[:4] + (1).to_bytes(4, "little") + raw[8:])
    with pytest.raises(LeafError, match="version 1"):
        gguf_metadata(tmp_path / "v1.gguf", ("test.int8",))
