"""ONNX models (torch.onnx's export, external data) and Keras weights (.keras, .weights.h5, legacy .h5):
the same weights give the same report as safetensors; nothing in a file is run; bad files are refused."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_htmp
from tests.test_streaming import _peak_rss

os.environ.setdefault("KERAS_BACKEND", "torch")  # the tests make their Keras files with the torch backend

import h5py  # noqa: E402  (in the test extra: missing, the module fails to import, loudly)
import onnx  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 24)
        self.conv = torch.nn.Conv1d(24, 32, 3)
        self.fc = torch.nn.Linear(32, 20)
        self.out = torch.nn.Linear(20, 10, bias=False)  # exported as MatMul of a transposed initializer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.emb(x).transpose(1, 2)).mean(-1)
        return self.out(torch.relu(self.fc(h)))


def _layers(path: Path, *args: str) -> dict[str, tuple]:
    proc = run_htmp("analyze", str(path), "-f", "json", "--min-dim", "8", *args)
    assert proc.returncode == 0, proc.stderr
    return {layer["name"]: (tuple(layer["shape"]), layer["power_law"]["alpha"], layer["metrics"]["stable_rank"],
                            layer["phase"]["phase"]) for layer in json.loads(proc.stdout)["layers"]}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = _Net().eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "net.safetensors"))
    torch.onnx.export(net, (torch.zeros(2, 7, dtype=torch.long),), str(out / "net.onnx"), dynamo=False)
    onnx.save_model(onnx.load(str(out / "net.onnx")), str(out / "external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="external.onnx.data", size_threshold=0)
    return out


def test_onnx_gives_the_report_of_the_same_weights(onnx_files: Path) -> None:
    reference = _layers(onnx_files / "net.safetensors")
    assert _layers(onnx_files / "net.onnx") == reference  # names from the graph: onnx::MatMul_16 is out.weight
    assert _layers(onnx_files / "external.onnx") == reference
    listing = run_htmp("ls", str(onnx_files / "external.onnx"))
    assert listing.returncode == 0, listing.stderr
    assert "4 matrices to analyse, 2 tensors skipped" in listing.stdout and "read one tensor at a time" in listing.stdout
    actions = {t["name"]: t["action"] for t in json.loads(run_htmp("ls", str(onnx_files / "external.onnx"),
                                                                   "-f", "json").stdout)["tensors"]}
    assert actions["conv.bias"] == ("skip: initializer (input 2 of Conv): not the weight of a MatMul, Gemm, Conv "
                                    "or Gather node")
    assert actions["out.weight"] == "analyse (linear)"


def test_onnx_external_data_is_read_one_tensor_at_a_time(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8192, 512), dtype=np.float32), f"layers.{k}.weight")
               for k in range(24)]
    nodes = [helper.make_node("MatMul", ["x" if k == 0 else f"h{k}", f"layers.{k}.weight"], [f"h{k + 1}"],
                              name=f"/layers.{k}/MatMul") for k in range(24)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8192])],
                              [helper.make_tensor_value_info("h24", TensorProto.FLOAT, [1, 512])], initializer=weights)
    onnx.save_model(helper.make_model(graph), str(tmp_path / "big.onnx"), save_as_external_data=True,
                    location="big.data", size_threshold=0)
    size = (tmp_path / "big.data").stat().st_size
    small = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              initializer=[numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")])
    onnx.save_model(helper.make_model(small), str(tmp_path / "small.onnx"))
    baseline = _peak_rss("analyze", str(tmp_path / "small.onnx"), "-f", "json")
    peak = _peak_rss("analyze", str(tmp_path / "big.onnx"), "-f", "json")
    assert peak - baseline < size / 3, ((peak - baseline) / 2**20, size / 2**20)


def _refused(path: Path, *words: str) -> None:
    proc = run_htmp("analyze", str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-300:], proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_hostile_onnx_files_are_one_line_exit_2(onnx_files: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07\xff\xff\xff not a protobuf")
    _refused(tmp_path / "junk.onnx", "not a readable ONNX model")
    model = onnx.load(str(onnx_files / "external.onnx"), load_external_data=False)
    (tmp_path / "secret").write_bytes(bytes(4096))
    inside = tmp_path / "model"
    inside.mkdir()
    for key, value, words in (("location", "../secret", ("not a file inside the model's folder",)),
                              ("length", "12", ("does not fit",)), ("offset", "x", ("not a number",))):
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        target = next(t for t in bad.graph.initializer if t.name == "fc.weight")
        for item in target.external_data:
            if item.key == key:
                item.value = value
        (inside / "external.onnx.data").write_bytes((onnx_files / "external.onnx.data").read_bytes())
        onnx.save_model(bad, str(inside / "bad.onnx"))
        _refused(inside / "bad.onnx", "'fc.weight'", *words)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """A Keras model (an embedding, a conv, two Dense, a Lambda whose code would leave a marker file
    if anything ran it) as .keras, .weights.h5 and legacy .h5, and its weights in PyTorch's order."""
    import keras

    out = tmp_path_factory.mktemp("keras")
    marker = out / "lambda-ran"
    keras.utils.set_random_seed(0)

    def touch(x):  # type: ignore[no-untyped-def]
        marker.write_text("ran")
        return x

    model = keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(50, 24, name="emb"),
                              keras.layers.Conv1D(32, 3, name="conv"), keras.layers.GlobalAveragePooling1D(name="pool"),
                              keras.layers.Dense(20, name="fc"), keras.layers.Lambda(touch, name="hook"),
                              keras.layers.Dense(10, use_bias=False, name="out")])
    model.save(str(out / "model.keras"))
    model.save_weights(str(out / "model.weights.h5"))
    model.save(str(out / "legacy.h5"))
    marker.unlink(missing_ok=True)  # building the model ran the Lambda once; from here nothing may
    torch_order = {"emb.embeddings": model.get_layer("emb").get_weights()[0],
                   "conv.kernel": np.transpose(model.get_layer("conv").get_weights()[0], (2, 1, 0)),
                   "fc.kernel": model.get_layer("fc").get_weights()[0].T,
                   "out.kernel": model.get_layer("out").get_weights()[0].T}
    return out, torch_order


def test_keras_files_give_the_report_of_the_same_weights(keras_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import save_file

    out, weights = keras_files
    save_file({name: np.ascontiguousarray(w) for name, w in weights.items()}, str(tmp_path / "same.safetensors"))
    reference = _layers(tmp_path / "same.safetensors")
    assert _layers(out / "model.keras") == reference
    legacy = _layers(out / "legacy.h5")
    assert {name.split(".", 1)[1]: value for name, value in legacy.items()} == reference  # sequential.fc.kernel
    # Without config.json a .weights.h5 names variables by index and takes every 2-D one for a Dense
    # kernel (in, out): the same spectra, the embedding's shown transposed.
    def unoriented(layers: dict[str, tuple]) -> list[tuple]:
        return sorted((tuple(sorted(shape)), *rest) for shape, *rest in layers.values())

    by_index = _layers(out / "model.weights.h5")
    assert set(by_index) == {"emb.0", "conv.0", "fc.0", "out.0"}
    assert unoriented(by_index) == unoriented(reference)
    assert not (out / "lambda-ran").exists()
    listing = run_htmp("ls", str(out / "model.keras"))
    assert listing.returncode == 0 and "4 matrices to analyse" in listing.stdout, listing.stderr


def test_hostile_keras_files_are_one_line_exit_2(keras_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = keras_files
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["data"] = np.zeros(4)
    _refused(tmp_path / "other.h5", "not Keras weights")
    with h5py.File(tmp_path / "group.h5", "w") as h5:
        h5.attrs["layer_names"] = ["fc"]
        h5.create_group("fc").attrs["weight_names"] = ["fc/kernel:0"]
        h5["fc"].create_group("fc/kernel:0")
    proc = run_htmp("analyze", str(tmp_path / "group.h5"), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"][0]["reason"] == "an HDF5 group where a weight was expected"
    with h5py.File(tmp_path / "absent.h5", "w") as h5:
        h5.attrs["layer_names"] = ["fc"]
        h5.create_group("fc").attrs["weight_names"] = ["fc/kernel:0"]
    _refused(tmp_path / "absent.h5", "not readable Keras weights")
    damaged = bytearray((out / "model.weights.h5").read_bytes())
    damaged[len(damaged) // 2:] = bytes(len(damaged) - len(damaged) // 2)
    (tmp_path / "damaged.weights.h5").write_bytes(bytes(damaged))
    proc = run_htmp("analyze", str(tmp_path / "damaged.weights.h5"))
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    with zipfile.ZipFile(out / "model.keras") as source, zipfile.ZipFile(tmp_path / "deflated.keras", "w",
                                                                            zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    assert _layers(tmp_path / "deflated.keras") == _layers(out / "model.keras")  # read through zipfile instead
