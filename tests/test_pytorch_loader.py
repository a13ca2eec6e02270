"""PyTorch checkpoints: nothing but tensors is ever unpickled; wrappers come off; reads are exact and bounded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import open_checkpoint
from htmp_cli.loaders.pytorch import unwrap_state_dict
from tests.conftest import run_htmp
from tests.test_streaming import _peak_rss


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return os.system, (f"touch {self.marker}",)


def _hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    state = {"w": torch.randn(16, 16), "x": Payload(marker)}
    files = {"zip": folder / "zip.pt", "legacy": folder / "legacy.pt", "pickle": folder / "plain.bin"}
    torch.save(state, files["zip"])
    torch.save(state, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps(state))
    sharded = folder / "sharded"
    sharded.mkdir()
    torch.save({"a": torch.randn(16, 16)}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.randn(16, 16), "evil": Payload(marker)}, sharded / "pytorch_model-00002-of-00002.bin")
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin",
        "evil": "pytorch_model-00002-of-00002.bin"}}))
    files["sharded"] = sharded
    return files


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    files = _hostile_files(tmp_path, marker)
    torch.load(files["zip"], weights_only=False)
    assert marker.exists()  # so the refusals below are real refusals


@pytest.mark.parametrize("form", ["zip", "legacy", "pickle", "sharded"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_files(tmp_path, marker)[form]
    for command in ("ls", "analyze"):
        result = run_htmp(command, str(path))
        assert result.returncode == 2, result.stderr
        assert "refused" in result.stderr and "never runs" in result.stderr
        # torch names the callable it refused, except in a plain pickle, which it stops at its framing opcode
        assert ("it calls posix.system" if form != "pickle" else "opcode") in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    with pytest.raises(CheckpointError, match="refused"):
        open_checkpoint(path)
    assert not marker.exists()


def test_a_pickled_module_is_refused_with_the_class_named(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(16, 16), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="torch.nn.modules.linear.Linear"):
        open_checkpoint(tmp_path / "model.pt")


def test_wrappers_nesting_and_prefixes() -> None:
    t = torch.zeros(2, 2)
    flat, names, notes = unwrap_state_dict(
        {"model": {"_orig_mod.enc": {"l1.weight": t}, "_orig_mod.head.weight": t}, "epoch": 4, "lr": 0.1}, torch.Tensor)
    assert set(names.values()) == {"enc.l1.weight", "head.weight"}
    assert notes[0] == "weights read from the 'model' entry; ignored: epoch, lr"
    assert "'_orig_mod.'" in notes[-1]
    flat, names, notes = unwrap_state_dict({"w": t, "step": 3, "config": {"depth": 2}}, torch.Tensor)
    assert list(flat) == ["w"] and "2 entries that are not tensors ignored: step, config.depth" in notes
    assert unwrap_state_dict([t], torch.Tensor)[0] == {}


def test_files_without_tensors_or_damaged_files_fail_in_one_line(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "list.pt").read_bytes()[:100])
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage" * 10)
    for name, message in (("list.pt", "holds no tensors"), ("cut.pt", "not a readable PyTorch checkpoint"),
                          ("junk.bin", "neither a PyTorch zip file nor a pickle")):
        result = run_htmp("ls", str(tmp_path / name))
        assert result.returncode == 2 and message in result.stderr, (name, result.stderr)


def test_every_float_dtype_reads_exactly_as_from_safetensors(fixtures: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reference = open_checkpoint(fixtures / "dtypes.safetensors")
    state = load_file(fixtures / "dtypes.safetensors")
    state["strided"] = state["f32.weight"].t()  # a transposed view: read through torch, not by offset
    torch.save(state, tmp_path / "dtypes.pt")
    ours = open_checkpoint(tmp_path / "dtypes.pt")
    by_name = {e.name: e for e in ours.tensors}
    assert by_name["strided"].nbytes == 0 and by_name["f32.weight"].nbytes > 0
    for entry in reference.tensors:
        if entry.dtype in ("I32", "BOOL"):
            continue
        expected = reference.read(entry)
        got = ours.read(by_name[entry.name])
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ours.read(by_name["strided"]), ours.read(by_name["f32.weight"]).T)


def test_peak_memory_of_a_pytorch_file_follows_the_largest_matrix(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.save({f"layers.{k}.weight": torch.randn(512, 8192, generator=generator) for k in range(24)}, tmp_path / "big.pt")
    size = (tmp_path / "big.pt").stat().st_size
    torch.save({"layers.0.weight": torch.randn(64, 64, generator=generator)}, tmp_path / "small.pt")
    baseline = _peak_rss("analyze", str(tmp_path / "small.pt"), "-f", "json")  # torch imported in both
    peak = _peak_rss("analyze", str(tmp_path / "big.pt"), "-f", "json")
    # One 16 MB tensor, its float64 copy and the Gram matrix: far below the 384 MB file.
    assert peak - baseline < size / 3, ((peak - baseline) / 2**20, size / 2**20)


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_that_require_grad_are_read(tmp_path: Path, legacy: bool) -> None:
    """Found by the fuzzer: a parameter saved with requires_grad=True (a dict of model.parameters(),
    or one flipped flag in a legacy pickle) was an internal error."""
    path = tmp_path / "params.pt"
    weights = {"w": torch.nn.Parameter(torch.randn(24, 16)), "v": torch.nn.Parameter(torch.randn(16, 12))}
    torch.save(weights, path, _use_new_zipfile_serialization=not legacy)
    result = run_htmp("analyze", str(path), "-f", "json", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [layer["status"] for layer in json.loads(result.stdout)["layers"]] == ["success", "success"]


def test_a_local_file_name_flagged_utf8_that_is_not_is_read_or_refused_in_one_line(tmp_path: Path) -> None:
    """Fuzzer find: torch reads such an archive, Python's zipfile raised UnicodeDecodeError (an
    internal error) when htmp looked at its records."""
    path = tmp_path / "badname.pt"
    torch.save({"w": torch.randn(32, 16)}, path)
    data = bytearray(path.read_bytes())
    data[data.find(b"badname/byteorder")] = 0xF3  # the record's local header; the directory keeps the name
    path.write_bytes(bytes(data))
    result = run_htmp("analyze", str(path), "-f", "json")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0 or (result.returncode == 2 and len(result.stderr.splitlines()) == 1)
