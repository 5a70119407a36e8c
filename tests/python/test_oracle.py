"""Our GGUF reader, writer and codecs checked against an independent
implementation: the `gguf` package from PyPI (llama.cpp's own GGUF library).

- Files written by gguf-py (every metadata value type, typed and nested
  arrays, non-default alignment, random ternary TQ1_0/TQ2_0 tensors, every
  ggml type in its size table) must read identically in `bitnet-cli info`,
  and every tensor we can dequantize must equal gguf-py's dequantization.
- Files written by our writer (fixtures and the metadata zoo example) must
  read in gguf-py exactly as our reader sees them.
"""
import math

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as VT
from gguf.quants import dequantize, quantize

from conftest import ROOT, binary, dump, info_json, run_cli

SCALARS = [
    ("test.u8", 200, VT.UINT8),
    ("test.i8", -100, VT.INT8),
    ("test.u16", 60000, VT.UINT16),
    ("test.i16", -30000, VT.INT16),
    ("test.u32", 4_000_000_000, VT.UINT32),
    ("test.i32", -2_000_000_000, VT.INT32),
    ("test.f32", 3.14159, VT.FLOAT32),
    ("test.bool_true", True, VT.BOOL),
    ("test.bool_false", False, VT.BOOL),
    ("test.string", "héllo wörld ✓ 🙂 \t\n", VT.STRING),
    ("test.u64", 2**64 - 1, VT.UINT64),
    ("test.i64", -(2**63), VT.INT64),
    ("test.f64", 2.718281828459045, VT.FLOAT64),
]

ARRAYS = [
    ("test.arr_u8", [0, 1, 255], VT.UINT8),
    ("test.arr_i8", [-128, 0, 127], VT.INT8),
    ("test.arr_u16", [0, 65535], VT.UINT16),
    ("test.arr_i16", [-32768, 32767], VT.INT16),
    ("test.arr_u32", list(range(1000)), VT.UINT32),
    ("test.arr_i32", [-5, 7, 2**31 - 1], VT.INT32),
    ("test.arr_f32", [0.5, -1.25, 1e-7, 3.0e38], VT.FLOAT32),
    ("test.arr_bool", [True, False, True], VT.BOOL),
    ("test.arr_str", ["", "a", "Ġhello", "<|eot_id|>", "日本語"], VT.STRING),
    ("test.arr_u64", [0, 2**64 - 1], VT.UINT64),
    ("test.arr_i64", [-(2**63), 2**63 - 1], VT.INT64),
    ("test.arr_f64", [1e-300, -2.5, 1e300], VT.FLOAT64),
]

NESTED = [
    ("test.nested_int", [[1, 2, 3], [4, 5]]),
    ("test.nested_str", [["a", "b"], ["c"]]),
]


def expected_scalar(value, vtype):
    if vtype == VT.FLOAT32:
        return float(np.float32(value))
    return value


def ternary(rng, shape, scale):
    """Random ternary weights times a scale that f16 holds exactly."""
    return (rng.integers(-1, 2, size=shape).astype(np.float32) * np.float32(scale)).astype(np.float32)


def metadata_by_key(info):
    return {m["key"]: m for m in info["metadata"]}


def check_tensor_table(ours, reader: GGUFReader):
    assert len(ours["tensors"]) == len(reader.tensors)
    for t, r in zip(ours["tensors"], reader.tensors):
        assert t["name"] == r.name
        assert t["type"] == r.tensor_type.name
        assert t["type_id"] == int(r.tensor_type)
        assert t["shape"] == [int(x) for x in r.shape]
        assert t["n_elements"] == int(r.n_elements)
        assert t["bytes"] == int(r.n_bytes)
        assert t["file_offset"] == int(r.data_offset)


DEQUANTIZABLE = {QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q6_K, QT.TQ1_0, QT.TQ2_0}


def check_dequantized(path, reader: GGUFReader, tmp_path):
    checked = 0
    for r in reader.tensors:
        if r.tensor_type not in DEQUANTIZABLE:
            continue
        theirs = dequantize(np.asarray(r.data), r.tensor_type).astype(np.float32).reshape(-1)
        ours = dump(path, r.name, tmp_path)
        assert ours.shape == theirs.shape, r.name
        # Bit-identical, NaN included.
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), r.name
        checked += 1
    return checked


def test_reader_reads_gguf_py_files_identically(tmp_path):
    rng = np.random.default_rng(1234)
    path = tmp_path / "from_gguf_py.gguf"
    w = GGUFWriter(path, "bitnet")
    w.add_custom_alignment(64)
    for key, value, vtype in SCALARS:
        w.add_key_value(key, value, vtype)
    for key, values, sub in ARRAYS:
        w.add_key_value(key, values, VT.ARRAY, sub_type=sub)
    for key, values in NESTED:
        w.add_key_value(key, values, VT.ARRAY)

    # Ternary tensors, quantized by gguf-py from random ternary floats.
    for name, shape, qtype in [
        ("blk.0.attn_q.weight", (64, 512), QT.TQ2_0),
        ("blk.0.ffn_down.weight", (32, 768), QT.TQ1_0),
        ("blk.0.ffn_up.weight", (3, 256), QT.TQ2_0),
    ]:
        data = quantize(ternary(rng, shape, 0.375), qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    # All-zero blocks get d = 0 in both formats.
    w.add_tensor("zeros.tq1", quantize(np.zeros((2, 256), np.float32), QT.TQ1_0), raw_dtype=QT.TQ1_0)
    # Float and 8-bit tables.
    floats = rng.standard_normal((16, 64)).astype(np.float32)
    w.add_tensor("token_embd.weight", floats.astype(np.float16))
    w.add_tensor("output_norm.weight", floats[0])
    w.add_tensor("bf16.weight", quantize(floats, QT.BF16), raw_dtype=QT.BF16)
    w.add_tensor("q8.weight", quantize(floats, QT.Q8_0), raw_dtype=QT.Q8_0)
    # Q6_K: gguf-py only dequantizes it, so random blocks with a sane f16 d.
    q6 = rng.integers(0, 256, size=(4, 210), dtype=np.uint8)
    q6[:, 208:210] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    w.add_tensor("q6k.weight", q6.reshape(2, 420), raw_dtype=QT.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ours = info_json(path)
    reader = GGUFReader(path)
    assert ours["version"] == 3
    assert ours["alignment"] == 64
    assert ours["data_offset"] == reader.data_offset
    md = metadata_by_key(ours)
    assert md["general.architecture"]["value"] == "bitnet"
    assert md["general.alignment"] == {"key": "general.alignment", "type": "UINT32", "value": 64}
    for key, value, vtype in SCALARS:
        assert md[key]["type"] == vtype.name, key
        assert md[key]["value"] == expected_scalar(value, vtype), key
    for key, values, sub in ARRAYS:
        assert md[key]["type"] == "ARRAY"
        assert md[key]["element_type"] == sub.name, key
        expect = [float(np.float32(v)) for v in values] if sub == VT.FLOAT32 else values
        assert md[key]["value"] == expect, key
    for key, values in NESTED:
        assert md[key]["element_type"] == "ARRAY"
        assert md[key]["value"] == values, key
    # Key order and count as gguf-py has them.
    assert [m["key"] for m in ours["metadata"]] == [f.name for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    check_tensor_table(ours, reader)
    assert check_dequantized(path, reader, tmp_path) == 9


def test_every_type_in_gguf_py_size_table(tmp_path):
    """One tensor of every ggml type gguf-py knows, as raw bytes: our reader
    must give the same byte sizes and offsets, so our type table matches."""
    rng = np.random.default_rng(7)
    path = tmp_path / "all_types.gguf"
    w = GGUFWriter(path, "llama")
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if qtype == QT.Q8_1:
            # gguf-py says 40 bytes; ggml's block_q8_1 is 36 (two f16 + 32
            # int8, static_assert in ggml-common.h). It is a runtime-only
            # activation type never stored in files; we follow ggml.
            continue
        raw = rng.integers(0, 256, size=(2, 3 * size), dtype=np.uint8)
        w.add_tensor(f"t.{qtype.name}", raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = info_json(path)
    check_tensor_table(ours, GGUFReader(path))
    assert len(ours["tensors"]) == len(gguf.GGML_QUANT_SIZES) - 1


@pytest.mark.parametrize("qtype", ["tq1_0", "tq2_0"])
@pytest.mark.parametrize("alignment", [32, 128])
def test_gguf_py_reads_our_fixtures(tmp_path, qtype, alignment):
    path = tmp_path / f"fixture_{qtype}_{alignment}.gguf"
    run_cli("gen-fixture", "-o", path, "--type", qtype, "--alignment", alignment, "--seed", 3)
    reader = GGUFReader(path)
    ours = info_json(path)
    assert reader.alignment == alignment
    check_tensor_table(ours, reader)
    check_metadata_matches_reader(ours, reader)
    assert check_dequantized(path, reader, tmp_path) == len(reader.tensors)


def check_metadata_matches_reader(ours, reader: GGUFReader):
    fields = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    assert [m["key"] for m in ours["metadata"]] == [f.name for f in fields]
    for m, f in zip(ours["metadata"], fields):
        assert m["type"] == f.types[0].name, m["key"]
        if f.types[0] == VT.ARRAY:
            assert m["element_type"] == f.types[1].name, m["key"]
            if f.types[1] == VT.ARRAY:
                continue  # gguf-py's reader does not decode nested arrays
        theirs = f.contents()
        if m["type"] == "FLOAT32" or m.get("element_type") == "FLOAT32":
            theirs = np.asarray(theirs, np.float32).astype(np.float64).tolist()
        assert m["value"] == theirs, m["key"]


def test_gguf_py_reads_our_metadata_zoo(tmp_path):
    """Our writer's output for every value type, read by gguf-py."""
    path = tmp_path / "zoo.gguf"
    import subprocess

    subprocess.run([str(binary("examples/gguf_zoo")), str(path)], check=True)
    reader = GGUFReader(path)
    ours = info_json(path)
    assert reader.alignment == 128
    check_metadata_matches_reader(ours, reader)
    types = {f.types[0].name for f in reader.fields.values()}
    assert types >= {t.name for t in VT}, "the zoo must hold every value type"
    check_tensor_table(ours, reader)
    assert check_dequantized(path, reader, tmp_path) == len(reader.tensors)


def write_2b4t_shaped_with_gguf_py(path, n_layers, n_vocab):
    """The 2B4T tensor table (TQ2_0 weights), written by gguf-py."""
    e, f, kv = 2560, 6912, 640
    w = GGUFWriter(path, "bitnet-b1.58")
    w.add_tensor("token_embd.weight", np.zeros((n_vocab, e), np.float16))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))

    def tq2(rows, cols):
        return np.zeros((rows, cols // 256 * 66), np.uint8)

    for i in range(n_layers):
        for name, k, m in [("attn_q", e, e), ("attn_k", e, kv), ("attn_v", e, kv), ("attn_output", e, e)]:
            w.add_tensor(f"blk.{i}.{name}.weight", tq2(m, k), raw_dtype=QT.TQ2_0)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.attn_sub_norm.weight", np.ones(e, np.float32))
        for name, k, m in [("ffn_gate", e, f), ("ffn_up", e, f), ("ffn_down", f, e)]:
            w.add_tensor(f"blk.{i}.{name}.weight", tq2(m, k), raw_dtype=QT.TQ2_0)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.ffn_sub_norm.weight", np.ones(f, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_table(text: str) -> str:
    return text[text.index("\ntensors (") :]


def test_2b4t_shaped_tensor_tables_agree(tmp_path):
    """`info` prints the same tensor table for a 2B4T-shaped file written by
    gguf-py and one written by our generator. CI uses 2 layers and a 4096-token
    vocabulary; BITNET_FULL_2B4T=1 runs the full 30 layers / 128256 tokens."""
    import os

    full = os.environ.get("BITNET_FULL_2B4T") == "1"
    layers, vocab = (30, 128256) if full else (2, 4096)
    theirs = tmp_path / "2b4t_gguf_py.gguf"
    ours = tmp_path / "2b4t_ours.gguf"
    write_2b4t_shaped_with_gguf_py(theirs, layers, vocab)
    run_cli("gen-fixture", "-o", ours, "--preset", "2b4t", "--type", "tq2_0", "--layers", layers, "--vocab", vocab)
    a = run_cli("info", theirs).stdout
    b = run_cli("info", ours).stdout
    # Offsets are relative to the data section, so metadata size differences
    # do not matter; everything else in the table must match.
    assert tensor_table(a) == tensor_table(b)
    assert tensor_table(a).count("\n") == 3 + 2 + 11 * layers
    check_tensor_table(info_json(ours), GGUFReader(ours))
