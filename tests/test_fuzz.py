"""Fuzzing every loader, through the whole `htmp analyze` command (the property: tests/fuzzing.py).

Targets: each container form's seed file mutated byte by byte (safetensors, PyTorch zip and legacy,
GGUF), safetensors headers and GGUF tables built from absurd parts, hostile folders (shard indexes
pointing outside their folder or at missing files, symlink loops, FIFOs, directories and empty files
where files belong), and hostile pickles in every container form. CI runs `HTMP_FUZZ_EXAMPLES`
(50) examples per hypothesis target and `HTMP_ATHERIS_RUNS` (100) atheris runs per format; `HTMP_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py` runs longer
(docs/fuzzing.md records the counts). `HTMP_FUZZ_STATS=FILE` appends the outcome counts to FILE.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from fuzzing import EXAMPLES, check_case, gguf_from_parts, mutated, safetensors_from_parts, seed_files

FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
SUFFIX = {"safetensors": ".safetensors", "pytorch-zip": ".pt", "pytorch-legacy": ".pt", "gguf": ".gguf"}
OUTCOMES: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _record_outcomes():  # type: ignore[no-untyped-def]
    yield
    target = os.environ.get("HTMP_FUZZ_STATS")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            for (name, outcome), count in sorted(OUTCOMES.items()):
                handle.write(f"{name}\t{outcome}\t{count}\n")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return seed_files(tmp_path_factory.mktemp("seeds"))


def safetensors_library_accepts(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
        return True
    except Exception:
        return False


def _header_end(form: str, blob: bytes) -> int:
    """Where a seed's headers and tables end: mutations favour the bytes before."""
    if form == "safetensors":
        return 8 + struct.unpack("<Q", blob[:8])[0]
    if form == "gguf":
        return blob.index(b"\x00" * 32) if b"\x00" * 32 in blob else 512
    return 1024  # the pickle comes first in both PyTorch forms


def test_seeds_are_analysed(seeds) -> None:  # type: ignore[no-untyped-def]
    """The control: unmutated, every seed passes the property as a successful analysis."""
    for form, path in seeds.items():
        assert check_case(path) == "analysed", form
    assert safetensors_library_accepts(seeds["safetensors"])


@pytest.mark.parametrize("form", list(SUFFIX))
def test_mutated_files(form: str, seeds, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed = seeds[form].read_bytes()
    hot = _header_end(form, seed)
    path = tmp_path / f"case{SUFFIX[form]}"

    @FUZZ
    @given(blob=mutated(seed, hot))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        if form == "safetensors":
            check_safetensors_case(path, "mutated safetensors")
        else:
            OUTCOMES[(f"mutated {form}", check_case(path))] += 1

    case()


def check_safetensors_case(path: Path, target: str) -> None:
    """The property, and htmp agrees with the safetensors library: where it rejects a file, htmp
    refuses it; where it loads one, htmp analyses it."""
    outcome = check_case(path)
    accepted = safetensors_library_accepts(path)
    OUTCOMES[(target, outcome)] += 1
    OUTCOMES[(f"{target}: library / htmp", f"{'accepts' if accepted else 'rejects'} / {outcome}")] += 1
    assert outcome == ("analysed" if accepted else "refused"), (
        f"the safetensors library {'accepts' if accepted else 'rejects'} this file; htmp {outcome} it")


def test_safetensors_headers_from_parts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "case.safetensors"

    @FUZZ
    @given(blob=safetensors_from_parts())
    # An empty F4 tensor with an odd last dimension: the library refuses it (F4 comes in pairs).
    @example(blob=b'K\x00\x00\x00\x00\x00\x00\x00{"layer0.weight": {"dtype": "F4", "shape": [0, 1], "data_offsets": [0, 0]}}')
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        check_safetensors_case(path, "safetensors from parts")

    case()


def test_gguf_tables_that_lie(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "case.gguf"

    @FUZZ
    @given(blob=gguf_from_parts())
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        OUTCOMES[("gguf from parts", check_case(path))] += 1

    case()


# --- hostile folders and shard indexes -------------------------------------------------------

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
# Shard names that leave the checkpoint's folder, one way or another: the index must be refused.
ESCAPES = ("../outside.safetensors", "{root}/outside.safetensors", "link_out.safetensors", "/dev/zero",
           "sub/../../outside.safetensors", "/etc/passwd")
OTHER_TARGETS = ("loop_a.safetensors", "self.safetensors", "dir.safetensors", "fifo.safetensors",
                 "empty.safetensors", "missing.safetensors", "", ".", "..", "sub", "sub/../" + SHARDS[0],
                 SHARDS[0] + "\x00.txt", "%2e%2e/outside.safetensors", "C:\\outside.safetensors")
INDEX_TEXTS = ("[]", "{", '{"weight_map": []}', '{"weight_map": {"a": 1}}', "\xff", "null", '"x"')
ENTRY_POINTS = ("folder", "folder", "index", "loop_a.safetensors", "self.safetensors", "fifo.safetensors",
                "dir.safetensors", "empty.safetensors", "missing", "root")
INDEX_FORMS = ("file", "file", "file", "loop", "directory", "fifo", "link_out", "empty")


def _shard(path: Path, name: str, seed: int) -> None:
    import numpy as np
    from fuzzing import FIXTURES

    FIXTURES.write_safetensors(path, [(name, "F32", np.random.default_rng(seed).standard_normal((16, 12)).astype("<f4"))])


def _build_tree(root: Path, weight_map: dict[str, str] | str, index_form: str) -> Path:
    ckpt = root / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    _shard(root / "outside.safetensors", "c", 3)
    _shard(ckpt / SHARDS[0], "a", 1)
    _shard(ckpt / SHARDS[1], "b", 2)
    (ckpt / "loop_a.safetensors").symlink_to("loop_b.safetensors")
    (ckpt / "loop_b.safetensors").symlink_to("loop_a.safetensors")
    (ckpt / "self.safetensors").symlink_to("self.safetensors")
    (ckpt / "dir.safetensors").mkdir()
    os.mkfifo(ckpt / "fifo.safetensors")
    (ckpt / "empty.safetensors").write_bytes(b"")
    (ckpt / "link_out.safetensors").symlink_to("../outside.safetensors")
    index = ckpt / "model.safetensors.index.json"
    text = weight_map if isinstance(weight_map, str) else json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": weight_map})
    if index_form == "file":
        index.write_text(text, encoding="utf-8", errors="surrogateescape")
    elif index_form == "loop":
        index.symlink_to(index.name)
    elif index_form == "directory":
        index.mkdir()
    elif index_form == "fifo":
        os.mkfifo(index)
    elif index_form == "link_out":
        (root / "outside.index.json").write_text(text, encoding="utf-8", errors="surrogateescape")
        index.symlink_to("../outside.index.json")
    else:
        index.write_bytes(b"")
    return ckpt


@st.composite
def hostile_trees(draw):  # type: ignore[no-untyped-def]
    if draw(st.integers(0, 5)) == 0:
        weight_map: dict[str, str] | str = draw(st.sampled_from(INDEX_TEXTS) | st.text(max_size=30))
    else:
        targets = st.sampled_from(SHARDS) | st.sampled_from(ESCAPES) | st.sampled_from(OTHER_TARGETS)
        weight_map = {"a": draw(targets), "b": draw(targets)}
        if draw(st.booleans()):
            weight_map[draw(st.sampled_from(["c", "a.weight", "", "b"]))] = draw(targets)
    return weight_map, draw(st.sampled_from(INDEX_FORMS)), draw(st.sampled_from(ENTRY_POINTS))


def test_hostile_folders_and_indexes() -> None:
    @FUZZ
    @given(tree=hostile_trees())
    def case(tree) -> None:  # type: ignore[no-untyped-def]
        weight_map, index_form, entry = tree
        root = Path(tempfile.mkdtemp(prefix="htmp-fuzz-"))
        try:
            if isinstance(weight_map, dict):
                weight_map = {k: v.replace("{root}", str(root)) for k, v in weight_map.items()}
            ckpt = _build_tree(root, weight_map, index_form)
            path = {"folder": ckpt, "index": ckpt / "model.safetensors.index.json", "missing": ckpt / "missing",
                    "root": root}.get(entry, ckpt / entry)
            outcome = check_case(path)
            OUTCOMES[("hostile folders", outcome)] += 1
            uses_index = entry in ("folder", "index") and index_form in ("file", "link_out")
            escapes = isinstance(weight_map, dict) and any(
                v.replace(str(root), "{root}") in ESCAPES for v in weight_map.values())
            if uses_index and escapes:
                assert outcome == "refused", f"an index naming a shard outside its folder was followed: {weight_map}"
            if uses_index and isinstance(weight_map, dict) and set(weight_map.values()) - set(SHARDS):
                assert outcome == "refused", f"an index naming a shard that is not a shard was followed: {weight_map}"
        finally:
            shutil.rmtree(root, ignore_errors=True)

    case()


# --- hostile pickles -------------------------------------------------------------------------

class Payload:
    """Unpickled unsafely, calls `target(*args)`."""

    def __init__(self, target, args) -> None:  # type: ignore[no-untyped-def]
        self.target, self.args = target, args

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return self.target, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    import builtins

    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "builtins.exec": Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": Payload(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": Payload(subprocess.Popen, (["touch", str(marker)],)),
        "pathlib.Path.touch": Payload(Path.touch, (marker,)),
    }


def _with_payload(placement: str, payload: Payload) -> dict:
    weights = {"w": torch.randn(16, 12)}
    if placement == "value":
        return {**weights, "evil": payload}
    if placement == "nested":
        return {"state_dict": weights, "optimizer": {"state": [1, {"momentum": [payload]}]}, "epoch": 3}
    return {"model": weights, "meta": (payload,)}  # inside a tuple


@pytest.mark.parametrize("form", ["zip", "legacy", "pickle", "sharded"])
@pytest.mark.parametrize("placement", ["value", "nested", "tuple"])
def test_hostile_pickles_in_every_container(form: str, placement: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pickle

    marker = tmp_path / "pwned"
    for name, payload in _payloads(marker).items():
        state = _with_payload(placement, payload)
        folder = tmp_path / f"{name}-{form}"
        folder.mkdir()
        if form == "zip":
            path = folder / "model.pt"
            torch.save(state, path)
        elif form == "legacy":
            path = folder / "model.pt"
            torch.save(state, path, _use_new_zipfile_serialization=False)
        elif form == "pickle":
            path = folder / "model.bin"
            path.write_bytes(pickle.dumps(state, protocol=2))
        else:
            torch.save({"a": torch.randn(16, 12)}, folder / "pytorch_model-00001-of-00002.bin")
            torch.save(state, folder / "pytorch_model-00002-of-00002.bin")
            keys = {"a": "pytorch_model-00001-of-00002.bin", "w": "pytorch_model-00002-of-00002.bin"}
            (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": keys}))
            path = folder
        assert check_case(path) == "refused", (name, form, placement)
        OUTCOMES[("hostile pickles", "refused")] += 1
        assert not marker.exists(), f"{name} ran ({form}, {placement})"


def test_atheris_byte_fuzzer_short_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Coverage-guided byte fuzzing of the safetensors and GGUF parsers (tests/fuzz_atheris.py), a
    bounded run; `python tests/fuzz_atheris.py FORMAT -runs=N` runs it by hand."""
    runs = int(os.environ.get("HTMP_ATHERIS_RUNS", "100"))
    for form in ("safetensors", "gguf"):
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_atheris.py"), form, f"-runs={runs}", "-seed=1",
                               f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"Done {runs} runs" in done.stderr, done.stderr[-2000:]


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_CONFIG_KEYS = ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern",
                "alpha_pattern", "base_model_name_or_path")


@st.composite
def hostile_adapters(draw):  # type: ignore[no-untyped-def]
    """An adapter config of lying or absurd values, and factors of any shapes under LoRA's names."""
    config = {key: draw(_JSON | st.sampled_from(["LORA", "IA3", 8, 16.0, True, {"q": 2}, {"(": 3}]))
              for key in draw(st.lists(st.sampled_from(_CONFIG_KEYS), unique=True))}
    side = st.integers(0, 24)
    tensors = {}
    for module in draw(st.lists(st.sampled_from(["m.q", "m.v", "m.emb", "m.conv"]), unique=True, min_size=1)):
        for factor in draw(st.lists(st.sampled_from(["lora_A.weight", "lora_B.weight", "lora_embedding_A",
                                                     "lora_embedding_B", "lora_magnitude_vector"]), unique=True)):
            tensors[f"base_model.model.{module}.{factor}"] = tuple(draw(st.lists(side, min_size=1, max_size=4)))
    raw = json.dumps(config).encode() if draw(st.booleans()) else draw(st.binary(max_size=64))
    return raw, tensors


def test_hostile_adapters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from safetensors.numpy import save_file

    @FUZZ
    @given(case=hostile_adapters())
    def case(case) -> None:  # type: ignore[no-untyped-def]
        raw, shapes = case
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        rng = np.random.default_rng(0)
        save_file({name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_bytes(raw)
        OUTCOMES[("hostile adapters", check_case(folder))] += 1
        shutil.rmtree(folder)

    case()


def _onnx_seed() -> bytes:
    """A small ONNX model: MatMul, Gemm (transB), Conv and Gather weights, a float16 one among them."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"mm.weight": rng.standard_normal((16, 12)).astype(np.float32),
               "gemm.weight": rng.standard_normal((12, 16)).astype(np.float16),
               "conv.weight": rng.standard_normal((12, 12, 3)).astype(np.float32),
               "emb.weight": rng.standard_normal((30, 16)).astype(np.float32), "bias": np.zeros(12, np.float32)}
    nodes = [helper.make_node("Gather", ["emb.weight", "ids"], ["e"]), helper.make_node("MatMul", ["e", "mm.weight"], ["m"]),
             helper.make_node("Gemm", ["m", "gemm.weight", "bias"], ["g"], transB=1),
             helper.make_node("Conv", ["g", "conv.weight"], ["y"])]
    graph = helper.make_graph(nodes, "seed", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, name) for name, w in weights.items()])
    return helper.make_model(graph).SerializeToString()


def test_mutated_onnx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed = _onnx_seed()
    path = tmp_path / "case.onnx"

    @FUZZ
    @given(blob=mutated(seed, len(seed)))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        OUTCOMES[("mutated onnx", check_case(path))] += 1

    case()


@st.composite
def hostile_keras(draw):  # type: ignore[no-untyped-def]
    """A legacy Keras HDF5 layout whose names point at datasets of any shape and dtype, at groups,
    or at nothing."""
    layers = draw(st.lists(st.sampled_from(["fc", "conv", "emb", "", "a/b"]), max_size=4))
    plan = []
    for layer in layers:
        for weight in draw(st.lists(st.sampled_from(["kernel:0", "bias:0", "embeddings:0", "x"]), max_size=3)):
            kind = draw(st.sampled_from(["dataset", "group", "missing"]))
            shape = tuple(draw(st.lists(st.integers(0, 20), max_size=4)))
            dtype = draw(st.sampled_from(["f4", "f2", "f8", "i4", "u1", "c8"]))
            plan.append((layer, f"{layer}/{weight}", kind, shape, dtype))
    return layers, plan


def test_hostile_keras_layouts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Structures built with h5py (libhdf5 parses the bytes themselves; mutating them tests that
    library, whose crashes no Python code can catch)."""
    import h5py
    import numpy as np

    path = tmp_path / "case.h5"

    @FUZZ
    @given(case=hostile_keras())
    def case(case) -> None:  # type: ignore[no-untyped-def]
        layers, plan = case
        with h5py.File(path, "w") as h5:
            h5.attrs["layer_names"] = [name.encode() for name in layers]
            names: dict[str, list[bytes]] = {}
            for layer, weight, kind, shape, dtype in plan:
                if not layer or "/" in layer:
                    continue
                group = h5.require_group(layer)
                names.setdefault(layer, []).append(weight.encode())
                group.attrs["weight_names"] = names[layer]
                if kind == "dataset" and weight not in group:
                    group.create_dataset(weight, data=np.ones(shape, dtype=dtype))
                elif kind == "group" and weight not in group:
                    group.create_group(weight)
        OUTCOMES[("hostile keras", check_case(path))] += 1

    case()
