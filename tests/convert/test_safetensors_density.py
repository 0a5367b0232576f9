"""The safetensors header density check (convert.safetensors_io) refuses headers packed with JSON
structure before Python parses them, and never a real header: strings (names, metadata) do not count."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from convert import ConversionError
from convert.safetensors_io import SafetensorsFile, _outside_strings


def test_strings_do_not_count_as_structure():
    raw = b'{"m": "1,2,[3],{4}", "q": "a\\"b,[", "e": "\\\\", "x": [1, 2]}'
    assert _outside_strings(raw) == b'{: , : , : , : [1, 2]}'


def test_real_headers_pass(tmp_path):
    # many scalar tensors with one-letter names, and metadata full of commas and brackets
    tensors = {f"t{i}": np.array(i, np.float32) for i in range(3000)}
    tensors.update({f"v{i}": np.ones((1,), np.int8) for i in range(2000)})
    meta = {"ids": ",".join(map(str, range(2000))), "nested": json.dumps([[i, [i]] for i in range(300)])}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=meta)
    f = SafetensorsFile(str(tmp_path / "a.safetensors"))
    assert len(f.entries) == 5000 and f.metadata["ids"].startswith("0,1,2")


@pytest.mark.parametrize("junk", [b"[" + b",".join([b"[]"] * 50_000) + b"]",
                                  b"[" + b",".join([b"1"] * 50_000) + b"]"])
def test_a_header_packed_with_structure_is_refused(tmp_path, junk):
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "junk": ' + junk + b"}}"
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ConversionError, match="far more than tensor entries need"):
        SafetensorsFile(str(tmp_path / "b.safetensors"))
