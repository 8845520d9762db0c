"""A GGUF file's metadata keys, read from its header without the tensors or the gguf package.

The gguf package's GGUFReader builds a numpy view of every field, which for a tokenizer's vocabulary and merges
(SmolLM2: 49,152 tokens, 48,900 merges) takes seconds. The header is a count of key-value pairs, each a string key,
a type tag and a value (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md); this reader decodes the values
asked for and seeks past the others, so reading the tokenizer flags of a GGUF takes milliseconds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from leaf.errors import LeafError

# the spec's value types: the struct format of each scalar; 8 is a string (u64 length, UTF-8), 9 an array (element
# type u32, count u64, elements)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
VERSIONS = (2, 3)  # the versions GGUFReader reads (1 had 32-bit lengths and is no longer written)


class _Header:
    """Reads of one byte order from the file, decoding a value or seeking past it."""

    def __init__(self, f: BinaryIO, order: str) -> None:
        self.f, self.order = f, order

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise EOFError
        return struct.unpack(self.order + fmt, data)[0]

    def value(self, kind: int, keep: bool):
        """The value of type `kind` at the cursor (None when not `keep`: skipped)."""
        if kind in SCALARS:
            if keep:
                return self.read(SCALARS[kind])
            self.f.seek(struct.calcsize(SCALARS[kind]), 1)
            return None
        if kind == STRING:
            size = self.read("Q")
            if not keep:
                self.f.seek(size, 1)
                return None
            data = self.f.read(size)
            if len(data) != size:
                raise EOFError
            return data.decode("utf-8")
        if kind == ARRAY:
            inner, count = self.read("I"), self.read("Q")
            if not keep and inner in SCALARS:
                self.f.seek(count * struct.calcsize(SCALARS[inner]), 1)
                return None
            items = [self.value(inner, keep) for _ in range(count)]
            return items if keep else None
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(gguf: str | Path, keys: tuple[str, ...] | list[str]) -> dict:
    """The values of some metadata keys (absent keys left out): Python scalars (bool for BOOL), str, and lists for
    arrays, as GGUFReader's `field.contents()` gives them (an array of arrays keeps its nesting, which contents()
    flattens). Stops reading once every key asked for is found."""
    gguf, wanted, out = Path(gguf), set(keys), {}
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise LeafError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic).")
        raw = f.read(4)
        if len(raw) != 4:
            raise LeafError(f"{gguf} is cut short: its GGUF header is incomplete.")
        # a big-endian file's version reads as a huge little-endian number
        order = "<" if struct.unpack("<I", raw)[0] < 1 << 16 else ">"
        version = struct.unpack(order + "I", raw)[0]
        if version not in VERSIONS:
            raise LeafError(f"{gguf} is GGUF version {version}; leaf reads versions {' and '.join(map(str, VERSIONS))}.")
        header = _Header(f, order)
        try:
            header.read("Q")  # tensor count
            for _ in range(header.read("Q")):
                if wanted <= out.keys():
                    break
                key = header.value(STRING, keep=True)
                keep = key in wanted
                value = header.value(header.read("I"), keep=keep)
                if keep:
                    out[key] = value
        except EOFError:
            raise LeafError(f"{gguf} is cut short: its metadata ends before its key count says.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise LeafError(f"{gguf} has a malformed metadata header ({exc}).") from None
    return out
