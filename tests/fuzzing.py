"""What the fuzzing suite shares: seed files of every format, byte mutations, hostile file systems,
and the one property every case must have.

The property (`check_case`): `htmp analyze CASE -f json` run in this process either analyses the
file (exit 0, a JSON report, every layer a success or a failure with its reason, nothing on stderr)
or refuses it (exit 2, exactly one line `htmp: error: ...` that is not an internal error). Never a
traceback, never longer than `CASE_SECONDS`, never more than `MEMORY_BOUND` bytes of allocations.
A hang or a crash of the interpreter fails the test run itself.

`HTMP_FUZZ_EXAMPLES` sets the examples per fuzzing target (default: the CI budget).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from hypothesis import strategies as st
from typer.testing import CliRunner

from htmp_cli.cli import app

EXAMPLES = int(os.environ.get("HTMP_FUZZ_EXAMPLES", "50"))
CASE_SECONDS = 30
# Fuzzed files are a few KB; an allocation sized by a lying header would be far above this.
MEMORY_BOUND = 48 * 2**20

_runner = CliRunner()


class CaseHung(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):  # type: ignore[no-untyped-def]
        raise CaseHung(f"no outcome after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_analyze(path: Path | str, *extra: str):  # type: ignore[no-untyped-def]
    """`htmp analyze PATH -f json` in this process, with its peak traced allocation."""
    tracemalloc.start()
    try:
        with time_limit(CASE_SECONDS):
            result = _runner.invoke(app, ["analyze", str(path), "-f", "json", "--no-progress", "--jobs", "1", *extra])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def check_case(path: Path | str, *extra: str) -> str:
    """'analysed' or 'refused'; an AssertionError saying what went wrong otherwise.

    With HTMP_FUZZ_KEEP=DIR, a failing case file is copied into DIR to be replayed by hand.
    """
    try:
        return _check_case(path, *extra)
    except AssertionError:
        keep = os.environ.get("HTMP_FUZZ_KEEP")
        if keep and Path(path).is_file():
            Path(keep).mkdir(parents=True, exist_ok=True)
            Path(keep, Path(path).name).write_bytes(Path(path).read_bytes())
        raise


def _check_case(path: Path | str, *extra: str) -> str:
    result, peak = run_analyze(path, *extra)
    assert peak <= MEMORY_BOUND, f"{peak / 2**20:.1f} MiB allocated"
    if isinstance(result.exception, CaseHung):
        raise AssertionError(str(result.exception))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    stderr = result.stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if result.exit_code == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("htmp: error: "), stderr
        assert result.stdout == ""
        return "refused"
    assert result.exit_code == 0, (result.exit_code, stderr)
    assert stderr == "", stderr  # no warnings leaking out of an analysis
    report = json.loads(result.stdout)
    for layer in report["layers"]:
        assert layer["status"] in ("success", "failed"), layer
        assert layer["status"] == "success" or layer["reason"], layer
    return "analysed"


# --- seed files ------------------------------------------------------------------------------

def seed_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    return {
        "enc.weight": (rng.standard_normal((24, 16)) * (1 + rng.pareto(2.0, 16))).astype(np.float32),
        "enc.bias": rng.standard_normal(24).astype(np.float32),
        "dec.weight": rng.standard_normal((16, 20)).astype(np.float16),
        "steps": np.arange(4, dtype=np.int64),
    }


def _fixture_writers():  # type: ignore[no-untyped-def]
    """fixtures/make_fixtures.py, whose safetensors writer takes dtypes numpy cannot name (BF16)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", Path(__file__).resolve().parent.parent / "fixtures" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURES = _fixture_writers()


def seed_files(folder: Path) -> dict[str, Path]:
    """One small valid file per container form, each analysable by htmp."""
    import torch

    weights = seed_weights()
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    bf16 = FIXTURES.to_bf16_bits(np.random.default_rng(9).standard_normal((12, 18)))
    files["safetensors"] = folder / "seed.safetensors"
    FIXTURES.write_safetensors(files["safetensors"], [
        *[(name, {"float32": "F32", "float16": "F16", "int64": "I64"}[str(a.dtype)], a) for name, a in weights.items()],
        ("mid.weight", "BF16", bf16),
    ])
    state = {name: torch.from_numpy(a.copy()) for name, a in weights.items()}
    state["mid.weight"] = torch.from_numpy(bf16.view(np.int16).copy()).view(torch.bfloat16)
    files["pytorch-zip"] = folder / "seed.pt"
    torch.save(state, files["pytorch-zip"])
    files["pytorch-legacy"] = folder / "seed_legacy.pt"
    torch.save(state, files["pytorch-legacy"], _use_new_zipfile_serialization=False)
    files["gguf"] = folder / "seed.gguf"
    write_gguf_seed(files["gguf"], weights)
    return files


def write_gguf_seed(path: Path, weights: dict[str, np.ndarray]) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "fuzz seed")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    for name, array in weights.items():
        writer.add_tensor(name, array.astype(np.float32) if array.dtype == np.float16 else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- byte mutations --------------------------------------------------------------------------

INTERESTING_U64 = (0, 1, 7, 8, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1)


@st.composite
def mutated(draw, seed: bytes, hot: int) -> bytes:  # type: ignore[no-untyped-def]
    """`seed` with 1-4 mutations: bit flips, overwritten, inserted or deleted runs, truncation,
    interesting 64-bit integers, and copies of its own chunks. Half land in the first `hot` bytes,
    where the headers and tables are."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        limit = min(len(data), hot) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(0, limit - 1))
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "u64", "u32", "splice"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[pos:]
        elif kind in ("u64", "u32"):
            value = draw(st.sampled_from(INTERESTING_U64) | st.integers(0, 2**64 - 1))
            packed = struct.pack("<Q", value) if kind == "u64" else struct.pack("<I", value & 0xFFFFFFFF)
            data[pos : pos + len(packed)] = packed
        else:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 256))]
    return bytes(data)


# --- safetensors headers built from parts ----------------------------------------------------

SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL",
                      "U64", "C64", "F4", "f32", "float32", "", "F32 ")
_ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
         "I8": 1, "U8": 1, "BOOL": 1, "U64": 8, "C64": 8}
_ABSURD = st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 2**64 + 5, 10**30])


@st.composite
def safetensors_from_parts(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Headers whose entries are mostly consistent (so analysis runs on random data), with absurd
    shapes and offsets, wrong dtypes and types, overlaps, gaps and lying lengths mixed in."""
    header: dict[str, object] = {}
    offset = 0
    for index in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f"layer{index}.weight", "", "__metadata__x", "a" * 300])
                    | st.text(max_size=12))
        dtype = draw(st.sampled_from(SAFETENSORS_DTYPES))
        shape = draw(st.sampled_from([[24, 16], [16, 12], [12, 40], [10, 10], [0, 16], [16], [2, 12, 12], []])
                     | st.lists(st.integers(0, 40) | _ABSURD, max_size=4))
        item = _ITEM.get(dtype, 4)
        count = int(np.prod([d for d in shape if isinstance(d, int)], dtype=object)) if shape else 1
        size = count * item
        how = draw(st.sampled_from(["exact", "exact", "exact", "overlap", "gap", "absurd", "reversed", "types"]))
        if how == "exact":
            offsets: object = [offset, offset + size]
        elif how == "overlap":
            offsets = [max(0, offset - 4), max(0, offset - 4) + size]
        elif how == "gap":
            offsets = [offset + 8, offset + 8 + size]
        elif how == "absurd":
            offsets = [draw(_ABSURD), draw(_ABSURD)]
        elif how == "reversed":
            offsets = [offset + size, offset]
        else:
            offsets = draw(st.sampled_from([None, "0", [0], [0, 1, 2], [0.0, 4.0], {"a": 1}, [True, False]]))
        entry: dict[str, object] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            entry[draw(st.sampled_from(["extra", "dtype"]))] = draw(st.sampled_from([1, "F32", None]))
        if draw(st.integers(0, 9)) == 0:
            entry = draw(st.sampled_from([[], "x", 1, None]))  # type: ignore[assignment]
        header[name] = entry
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            offset = max(offset, min(max(offsets), 1 << 20))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"n": 1}, [], "x", None, {}]))
    text = json.dumps(header).encode()
    text += b" " * draw(st.integers(0, 7))
    data_len = draw(st.sampled_from([offset, offset, max(0, offset - 3), offset + 5]) | st.integers(0, 4096))
    length = draw(st.sampled_from([len(text)] * 6 + [len(text) + 1, max(0, len(text) - 1), 2**64 - 1, 10**8, 0]))
    data = draw(st.binary(min_size=min(data_len, 64), max_size=min(data_len, 64)))
    # Random floats are mostly finite; the rest of the data section repeats them.
    body = (data * (data_len // max(1, len(data)) + 1))[:data_len] if data else bytes(data_len)
    return struct.pack("<Q", length) + text + body


# --- GGUF files built from parts -------------------------------------------------------------

def _gguf_string(text: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text


@st.composite
def gguf_from_parts(draw) -> bytes:  # type: ignore[no-untyped-def]
    """GGUF files whose counts, lengths, types, dims and offsets may lie."""
    lie = st.sampled_from(INTERESTING_U64)
    version = draw(st.sampled_from([3, 3, 3, 2, 1, 4, 2**32 - 1]))
    tensors = draw(st.lists(st.tuples(
        st.sampled_from([b"blk.0.attn_q.weight", b"blk.0.ffn_up.weight", b"", b"\xff\xfe", b"x" * 70]),
        st.sampled_from([[16, 24], [12, 16], [32, 32], [256, 4], [16], [1, 1, 1, 1, 1]])
        | st.lists(st.integers(0, 64) | lie, max_size=6),
        st.sampled_from([0, 0, 1, 8, 30, 28, 12, 2, 31, 99, 2**32 - 1]),
        st.sampled_from(["packed", "packed", "packed", "unaligned", "lie"]),
    ), max_size=3))
    kvs = draw(st.lists(st.tuples(
        st.sampled_from([b"general.architecture", b"general.alignment", b"tokenizer.ggml.tokens", b"split.count", b"k"]),
        st.sampled_from([4, 8, 9, 10, 0, 12, 7, 13, 2**32 - 1]),
    ), max_size=4))
    n_tensors = len(tensors) if draw(st.integers(0, 4)) else draw(lie)
    n_kv = len(kvs) if draw(st.integers(0, 4)) else draw(lie)
    out = b"GGUF" + struct.pack("<I", version) + struct.pack("<QQ", n_tensors, n_kv)
    alignment = 32
    for key, value_type in kvs:
        out += _gguf_string(key, None if draw(st.integers(0, 5)) else draw(lie)) + struct.pack("<I", value_type)
        if value_type == 4:
            value = draw(st.sampled_from([32, 0, 1, 3, 64, 2**31]))
            if key == b"general.alignment":
                alignment = value
            out += struct.pack("<I", value)
        elif value_type == 8:
            out += _gguf_string(b"llama", None if draw(st.integers(0, 5)) else draw(lie))
        elif value_type == 9:
            count = draw(st.sampled_from([0, 3, 3, 2**40, 2**64 - 1]))
            element = draw(st.sampled_from([8, 8, 4, 9, 99]))
            out += struct.pack("<IQ", element, count)
            out += b"".join(_gguf_string(b"tok") for _ in range(3)) if element == 8 else b"\x00" * 12
        elif value_type in (10, 12):
            out += struct.pack("<Q", draw(lie))
        elif value_type == 0:
            out += b"\x01"
        elif value_type == 7:
            out += draw(st.sampled_from([b"\x00", b"\x01", b"\x02"]))
    sizes = []
    offset = 0
    for name, dims, ggml_type, how in tensors:
        out += _gguf_string(name) + struct.pack("<I", len(dims) if draw(st.integers(0, 5)) else draw(lie) & 0xFFFFFFFF)
        out += b"".join(struct.pack("<Q", d % 2**64) for d in dims)
        elements = int(np.prod(dims, dtype=object)) if dims else 1
        size = min(elements * 4, 1 << 16)
        place = {"packed": offset, "unaligned": offset + 1, "lie": draw(lie)}[how]
        out += struct.pack("<I", ggml_type) + struct.pack("<Q", place % 2**64)
        sizes.append(size)
        offset += -(-size // 32) * 32
    pad = alignment if 0 < alignment < 4096 else 32
    out += b"\x00" * (-len(out) % pad)
    payload = draw(st.binary(min_size=0, max_size=64))
    total = draw(st.sampled_from([offset, offset, max(0, offset - 5), offset + 7]))
    out += (payload * (total // max(1, len(payload)) + 1))[:total] if payload else bytes(total)
    return out
