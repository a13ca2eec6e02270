"""ONNX models: the weight initializers of MatMul, Gemm, Conv (and Gather: embeddings) nodes.

The graph is read with the `onnx` package, external data left on disk: an initializer stored
outside the model (`data_location = EXTERNAL`) is read by its offset in its data file, one tensor
at a time, after its location was checked to lie inside the model's folder. Shapes are given in
PyTorch's (out, in) order: a MatMul weight (in, out), or a Gemm's B without transB, is read
transposed; conv kernels are (out, in, k...) already. An initializer without a name of its own
(`onnx::MatMul_12`, what torch.onnx gives a transposed weight) is named by its node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import BITS_PER_ELEMENT, Decoder
from htmp_cli.loaders.entry import TensorEntry, read_stored
from htmp_cli.loaders.matrices import SkippedTensor

# onnx.TensorProto.DataType -> the safetensors names every loader uses
_DTYPES = {1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 9: "BOOL", 10: "F16", 11: "F64",
           12: "U32", 13: "U64", 16: "BF16", 17: "F8_E4M3", 19: "F8_E5M2"}
# Which input of a node is its weight, and whether that input is stored (in, out).
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


@dataclass(frozen=True)
class OnnxModel:
    tensors: tuple[TensorEntry, ...]
    skipped: tuple[SkippedTensor, ...]
    files: tuple[Path, ...]  # the model, then the external data files its weights lie in
    reader: Callable[[TensorEntry], tuple[np.ndarray, Decoder | None]]
    notes: tuple[str, ...]


def read_onnx(path: Path) -> OnnxModel:
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"{path}: an ONNX model needs the onnx package: pip install 'htmp-cli[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and the checker's errors alike
        raise CheckpointError(f"{path}: not a readable ONNX model ({type(err).__name__}: {str(err)[:120]})") from None
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    roles: dict[str, tuple[Any, int]] = {}  # initializer -> (the first node using it as its weight, input index)
    users: dict[str, list[str]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in initializers:
                users.setdefault(name, []).append(f"input {index} of {node.op_type}")
                weight = _WEIGHT_INPUT.get(node.op_type)
                if name not in roles and (index == weight or (node.op_type == "MatMul" and index == 0)):
                    roles[name] = (node, index)
    folder = path.parent.resolve()
    entries, skipped, stored_shapes, transposed, inline, files = [], [], {}, set(), {}, [path]
    for name, tensor in initializers.items():
        dtype = _DTYPES.get(tensor.data_type, f"ONNX type {tensor.data_type}")
        shape = tuple(int(d) for d in tensor.dims)
        if name not in roles:
            why = f"{', '.join(sorted(set(users[name])))}" if name in users else "used by no node"
            skipped.append(SkippedTensor(name, shape, dtype, f"initializer ({why}): not the weight of a MatMul, Gemm, "
                                                             "Conv or Gather node"))
            continue
        node, index = roles[name]
        flip = len(shape) == 2 and index == 1 and (node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)))
        shown = _own_name(name, node)
        entry = TensorEntry(name=shown, dtype=dtype, shape=shape[::-1] if flip else shape, file=path, key=name)
        if flip:
            transposed.add(shown)
        if tensor.data_location == _EXTERNAL:
            entry = _external(path, folder, tensor, entry, shape)
            if entry.file not in files:
                files.append(entry.file)
        else:
            inline[shown] = tensor
        stored_shapes[shown] = shape
        entries.append(entry)

    def read(entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
        if entry.name in inline:
            values, decode = _inline_array(inline[entry.name], path), None
        else:
            values, decode = read_stored(replace(entry, shape=stored_shapes[entry.name]))
        return (values.T if entry.name in transposed else values), decode

    notes = [f"ONNX opset {', '.join(str(o.version) for o in model.opset_import) or '?'}, "
             f"{len(graph.node)} nodes; {len(entries)} weight initializers of MatMul, Gemm, Conv and Gather nodes"]
    if len(files) > 1:
        notes.append(f"external data in {', '.join(f.name for f in files[1:])}, read one tensor at a time")
    return OnnxModel(tuple(entries), tuple(skipped), tuple(files), read, tuple(notes))


def _own_name(name: str, node: Any) -> str:
    if not name.startswith("onnx::"):
        return name
    # torch.onnx names a node by its module path and op: "/layers.0/fc/MatMul" is layers.0.fc's.
    parts = (node.name or node.output[0]).strip("/").split("/")
    return ".".join(parts[:-1] if len(parts) > 1 else parts) + ".weight"


def _external(path: Path, folder: Path, tensor: Any, entry: TensorEntry, shape: tuple[int, ...]) -> TensorEntry:
    info = {item.key: item.value for item in tensor.external_data}
    location = info.get("location", "")
    target = (folder / location).resolve()
    if not location or folder not in target.parents or not target.is_file():
        raise CheckpointError(f"{path}: initializer {tensor.name!r} has its data in {location!r}, "
                              "which is not a file inside the model's folder")
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
    except ValueError:
        raise CheckpointError(f"{path}: initializer {tensor.name!r} has an offset or length that is not a number") from None
    bits = BITS_PER_ELEMENT.get(entry.dtype)
    if bits is None:
        return replace(entry, file=target)  # skipped by its dtype, never read
    expected = int(np.prod(shape, dtype=np.int64)) * bits // 8
    size = target.stat().st_size
    if (length is not None and length != expected) or offset < 0 or offset + expected > size:
        raise CheckpointError(f"{path}: initializer {tensor.name!r} ({'x'.join(map(str, shape))} {entry.dtype}, "
                              f"{expected} bytes) does not fit at offset {offset} of {location} ({size} bytes)")
    return replace(entry, file=target, offset=offset, nbytes=expected)


def _inline_array(tensor: Any, path: Path) -> np.ndarray:
    from onnx import numpy_helper

    try:
        values = numpy_helper.to_array(tensor)
    except Exception as err:
        raise CheckpointError(f"{path}: initializer {tensor.name!r} cannot be read ({type(err).__name__}: "
                              f"{str(err)[:120]})") from None
    if values.dtype.kind == "V" or values.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        values = values.astype(np.float32)  # ml_dtypes' types hold their values exactly in float32
    return values
