"""Re-declare the input/output shapes of an ONNX model, in memory, without the ``onnx`` package.

The bundled NanoDet graph is size-agnostic inside (convolutions, explicit 1-pixel Pads, Resize by
*scales* 2 and 0.5, head Reshapes to ``[1, C, -1]``) but its declared input is fixed at
``[1, 3, 416, 416]`` and onnxruntime refuses any other size against it. Changing the declared
shapes is all it takes to run it at another input size (e.g. 416x320, which holds a 4:3 frame at
the same scale as 416x416 with 80 % fewer padding rows). The file on disk is never touched: the
detector checks its sha256, then hands onnxruntime the patched bytes.

Only the protobuf wire format is needed: ``ModelProto.graph`` (field 7) -> ``GraphProto.input``
(11) / ``output`` (12) -> ``ValueInfoProto.type`` (2) -> ``TypeProto.tensor_type`` (1) ->
``Tensor.shape`` (2) -> ``TensorShapeProto.dim`` (1) -> ``Dimension.dim_value`` (1) /
``dim_param`` (2). Every other field is copied byte for byte, so the weights are not re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["declared_shapes", "set_declared_shapes"]

Dim = int | str | None  # a fixed size, a symbolic name, or unknown
_Field = tuple[int, int, object]  # (field number, wire type, int for varints / bytes-like otherwise)


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes | memoryview) -> list[_Field]:
    mv = memoryview(buf)
    out: list[_Field] = []
    pos, end = 0, len(mv)
    while pos < end:
        key, pos = _varint(mv, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(mv, pos)
            out.append((num, wt, val))
        elif wt == 2:
            n, pos = _varint(mv, pos)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            out.append((num, wt, mv[pos : pos + n]))
            pos += n
        elif wt == 1:
            out.append((num, wt, mv[pos : pos + 8]))
            pos += 8
        elif wt == 5:
            out.append((num, wt, mv[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
    return out


def _encode(fields: Sequence[_Field]) -> bytes:
    parts: list[bytes] = []
    for num, wt, val in fields:
        parts.append(_enc_varint((num << 3) | wt))
        if wt == 0:
            assert isinstance(val, int)
            parts.append(_enc_varint(val))
        else:
            data = bytes(val)  # type: ignore[call-overload]
            if wt == 2:
                parts.append(_enc_varint(len(data)))
            parts.append(data)
    return b"".join(parts)


def _replace(buf: bytes | memoryview, num: int, fn: Callable[[memoryview], bytes]) -> bytes:
    """Re-encode ``buf`` with every length-delimited field ``num`` replaced by ``fn(its bytes)``."""
    return _encode([(n, wt, fn(v) if n == num and wt == 2 else v) for n, wt, v in _fields(buf)])  # type: ignore[arg-type]


def _get(buf: bytes | memoryview, num: int) -> list[object]:
    return [v for n, _, v in _fields(buf) if n == num]


def _value_info_name(vi: memoryview) -> str:
    names = _get(vi, 1)
    return bytes(names[0]).decode() if names else ""  # type: ignore[call-overload]


def _dims_of(vi: memoryview) -> list[Dim]:
    for tp in _get(vi, 2):
        for tensor in _get(tp, 1):  # type: ignore[arg-type]
            for shape in _get(tensor, 2):  # type: ignore[arg-type]
                dims: list[Dim] = []
                for d in _get(shape, 1):  # type: ignore[arg-type]
                    value: Dim = None
                    for n, _, v in _fields(d):  # type: ignore[arg-type]
                        if n == 1:
                            value = int(v)  # type: ignore[call-overload]
                        elif n == 2:
                            value = bytes(v).decode()  # type: ignore[call-overload]
                    dims.append(value)
                return dims
    return []


def _shape_proto(dims: Sequence[Dim]) -> bytes:
    out: list[_Field] = []
    for d in dims:
        if isinstance(d, int):
            dim = _encode([(1, 0, d)])
        elif isinstance(d, str):
            dim = _encode([(2, 2, d.encode())])
        else:
            dim = b""
        out.append((1, 2, dim))
    return _encode(out)


def _with_dims(vi: memoryview, dims: Sequence[Dim]) -> bytes:
    shape = _shape_proto(dims)

    def tensor(t: memoryview) -> bytes:
        fields = [f for f in _fields(t) if f[0] != 2]
        return _encode([*fields, (2, 2, shape)])

    return _replace(vi, 2, lambda tp: _replace(tp, 1, tensor))


def declared_shapes(model: bytes) -> tuple[dict[str, list[Dim]], dict[str, list[Dim]]]:
    """(inputs, outputs) of the model's graph: name -> declared dims."""
    graphs = _get(model, 7)
    if not graphs:
        raise ValueError("not an ONNX model: no graph")
    g = graphs[0]
    ins = {_value_info_name(vi): _dims_of(vi) for vi in _get(g, 11)}  # type: ignore[arg-type]
    outs = {_value_info_name(vi): _dims_of(vi) for vi in _get(g, 12)}  # type: ignore[arg-type]
    return ins, outs


def set_declared_shapes(model: bytes, shapes: Mapping[str, Sequence[Dim]]) -> bytes:
    """The model with the inputs/outputs named in ``shapes`` re-declared; KeyError if one is absent."""
    seen: set[str] = set()

    def value_info(vi: memoryview) -> bytes:
        name = _value_info_name(vi)
        if name not in shapes:
            return bytes(vi)
        seen.add(name)
        return _with_dims(vi, shapes[name])

    def graph(g: memoryview) -> bytes:
        return _encode(
            [(n, wt, value_info(v) if n in (11, 12) and wt == 2 else v) for n, wt, v in _fields(g)]  # type: ignore[arg-type]
        )

    out = _replace(model, 7, graph)
    missing = set(shapes) - seen
    if missing:
        raise KeyError(f"graph has no input/output named {', '.join(sorted(missing))}")
    return out
