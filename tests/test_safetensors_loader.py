"""The safetensors loader: exact dtype conversion, header validation, shards, streaming."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import open_checkpoint
from htmp_cli.loaders.dtypes import F8_E4M3_VALUES, F8_E5M2_VALUES
from htmp_cli.loaders.safetensors import read_header


def test_every_float_dtype_converts_exactly(fixtures: Path) -> None:
    import torch
    from safetensors.torch import load_file

    reference = load_file(fixtures / "dtypes.safetensors")
    checkpoint = open_checkpoint(fixtures / "dtypes.safetensors")
    for entry in checkpoint.tensors:
        if entry.dtype in ("I32", "BOOL"):
            continue
        ours = checkpoint.read(entry)
        theirs = reference[entry.name].to(torch.float64).numpy()
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.astype(np.float64), theirs, err_msg=entry.name)


def test_float8_tables_match_torch_on_all_codes() -> None:
    import torch

    codes = torch.arange(256, dtype=torch.uint8)
    for table, dtype in ((F8_E4M3_VALUES, torch.float8_e4m3fn), (F8_E5M2_VALUES, torch.float8_e5m2)):
        expected = codes.view(dtype).to(torch.float32).numpy()
        np.testing.assert_array_equal(table, expected)


def test_sharded_checkpoint_reads_both_shards(fixtures: Path) -> None:
    for path in (fixtures / "sharded", fixtures / "sharded" / "model.safetensors.index.json"):
        checkpoint = open_checkpoint(path)
        assert checkpoint.format == "safetensors-sharded"
        assert sorted(e.name for e in checkpoint.tensors) == ["a.bias", "a.weight", "b.weight"]
        assert len(checkpoint.files) == 2


def test_folder_with_model_safetensors(tmp_path: Path, fixtures: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes((fixtures / "demo_model.safetensors").read_bytes())
    assert open_checkpoint(tmp_path).format == "safetensors"


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated.safetensors", "tensor 'v.weight' ends at byte"),
        ("empty.safetensors", "too short for a safetensors header"),
        ("short.safetensors", "too short for a safetensors header"),
        ("header_too_long.safetensors", "runs past the end"),
        ("header_absurd.safetensors", "exceeds the 100000000-byte limit"),
        ("not_json.safetensors", "not valid JSON"),
        ("not_object.safetensors", "not an object"),
        ("unknown_dtype.safetensors", "tensor 'w.weight': unknown dtype 'F12'"),
        ("negative_shape.safetensors", "tensor 'w.weight': shape [-16, -16]"),
        ("offsets_past_end.safetensors", "tensor 'v.weight' ends at byte 4096"),
        ("overlap.safetensors", "tensor 'v.weight' overlaps"),
        ("size_mismatch.safetensors", "tensor 'w.weight': shape [16, 15] of F32 needs 960 bytes"),
        ("missing_field.safetensors", "tensor 'w.weight': missing field 'data_offsets'"),
        ("shard_escape", "resolves outside the checkpoint folder"),
        ("shard_missing", "shard 'model-00001-of-00002.safetensors' is missing"),
    ],
)
def test_corrupt_checkpoints_are_rejected_with_the_fault_named(fixtures: Path, name: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=None) as info:
        open_checkpoint(fixtures / "corrupt" / name)
    assert message in str(info.value)


def test_corrupt_fixtures_are_rejected_by_the_safetensors_library_too(fixtures: Path) -> None:
    from safetensors import safe_open

    for path in sorted((fixtures / "corrupt").glob("*.safetensors")):
        with pytest.raises(Exception):
            with safe_open(str(path), framework="numpy") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)


def test_missing_path_and_directory_without_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        open_checkpoint(tmp_path)


def _file_with_header(tmp_path: Path, header: object, payload: bytes) -> Path:
    body = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + payload)
    return path


_dtype = st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U8", "F8_E4M3", "BOOL", "X9", 7])
_dim = st.one_of(st.integers(-2, 6), st.just(True), st.floats(0, 3))
_entry = st.fixed_dictionaries(
    {"dtype": _dtype, "shape": st.lists(_dim, max_size=3), "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3)}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(min_size=1, max_size=4), _entry, max_size=4), payload_len=st.integers(0, 80))
def test_random_headers_agree_with_the_safetensors_library(tmp_path: Path, header: dict, payload_len: int) -> None:
    """Whatever the header, htmp either loads what the library loads or rejects it cleanly."""
    from safetensors import safe_open

    path = _file_with_header(tmp_path, header, bytes(range(payload_len)))
    try:
        with safe_open(str(path), framework="numpy") as handle:
            library_names = sorted(handle.keys())
        library_ok = True
    except Exception:
        library_ok = False
    try:
        ours = read_header(path)
        ours_ok = True
    except CheckpointError:
        ours_ok = False
    if not library_ok:
        assert not ours_ok, f"library rejects, htmp accepts: {header}"
    if ours_ok:
        assert sorted(e.name for e in ours.tensors) == library_names
