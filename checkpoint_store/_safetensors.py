"""The safetensors file format, written from and read into tensor memory without extra copies.

The ``safetensors`` library serialises to one ``bytes`` object (a full copy of every tensor) and
deserialises by copying again. A checkpoint of serving state can be gigabytes, so this module
writes the documented format directly from each tensor's own buffer, and reads it back as
zero-copy views over a buffer whose checksum has already been verified (a private memory map or a
preallocated array). The files are ordinary safetensors files: the library reads them, and this
reader accepts the library's files.

Format: 8-byte little-endian header length N, N bytes of JSON header
(``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, padded with
spaces), then the data section; offsets are relative to the data section.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# safetensors dtype name -> numpy dtype (little-endian); BF16 has no numpy dtype.
_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in _NP_DTYPES.items()}
_ITEMSIZE.update({"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1})

_TORCH_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}

MAX_HEADER = 100 * 1024 * 1024
CHUNK = 64 * 1024 * 1024


class TensorFormatError(ValueError):
    """Tensors that cannot be written, or a safetensors file whose structure is wrong."""


@dataclass(frozen=True)
class _Item:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview  # flat bytes, C order, little-endian


@dataclass(frozen=True)
class WritePlan:
    """A safetensors file as a header plus the tensors' own buffers, in file order."""

    header: bytes
    items: tuple[_Item, ...]
    framework: str

    @property
    def size(self) -> int:
        return len(self.header) + sum(len(i.data) for i in self.items)

    def chunks(self, chunk: int = CHUNK) -> Iterator[memoryview]:
        yield memoryview(self.header)
        for item in self.items:
            data = item.data
            for off in range(0, len(data), chunk):
                yield data[off : off + chunk]


def _is_torch(value: object) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "untyped_storage")


def _from_torch(name: str, tensor: Any) -> _Item:
    import torch

    dtype = _TORCH_NAMES.get(str(tensor.dtype).removeprefix("torch."))
    if dtype is None:
        raise TensorFormatError(f"tensors[{name!r}]: dtype {tensor.dtype} is not supported")
    if tensor.layout != torch.strided:
        raise TensorFormatError(f"tensors[{name!r}]: only dense tensors can be stored")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    data = flat.numpy().data.cast("B")
    return _Item(name, dtype, tuple(int(d) for d in t.shape), data)


def _from_numpy(name: str, array: Any) -> _Item:
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    dtype = next((st for st, dt in _NP_DTYPES.items() if arr.dtype == dt), None)
    if dtype is None:
        raise TensorFormatError(f"tensors[{name!r}]: dtype {arr.dtype} is not supported")
    arr = np.ascontiguousarray(arr)
    data = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
    return _Item(name, dtype, tuple(int(d) for d in arr.shape), data)


def plan(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> WritePlan:
    """Lay out ``tensors`` (numpy arrays or torch tensors) as a safetensors file.

    Tensors are ordered by element size, largest first, so every tensor's data is aligned to its
    element size in the file (the data section starts on an 8-byte boundary): readers can view
    it in place.
    """
    problems: list[str] = []
    items: list[_Item] = []
    any_torch = False
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            problems.append(f"tensors: {name!r} is not a usable tensor name")
            continue
        try:
            if _is_torch(value):
                any_torch = True
                items.append(_from_torch(name, value))
            elif isinstance(value, np.ndarray | np.generic):
                items.append(_from_numpy(name, value))
            else:
                what = type(value).__name__
                problems.append(f"tensors[{name!r}]: {what} is not a numpy array or torch tensor")
        except TensorFormatError as exc:
            problems.append(str(exc))
    if problems:
        raise TensorFormatError("; ".join(problems))
    items.sort(key=lambda i: -_ITEMSIZE[i.dtype])  # stable: keeps insertion order per size
    framework = "pt" if any_torch else "np"
    meta = {"format": framework, **(dict(metadata) if metadata else {})}
    header_obj: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for item in items:
        end = offset + len(item.data)
        header_obj[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header_obj, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return WritePlan(struct.pack("<Q", len(raw)) + raw, tuple(items), framework)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


@dataclass(frozen=True)
class Layout:
    specs: tuple[TensorSpec, ...]
    metadata: dict[str, str]


def parse_header(buf: memoryview) -> Layout:
    """Validate a whole safetensors file held in ``buf``; every offset is checked."""
    size = len(buf)
    if size < 8:
        raise TensorFormatError(f"file of {size} bytes has no header")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER or 8 + n > size:
        raise TensorFormatError(f"header length {n} does not fit a file of {size} bytes")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensorFormatError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise TensorFormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TensorFormatError("__metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    specs: list[TensorSpec] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise TensorFormatError(f"{name!r}: entry is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if dtype not in _ITEMSIZE:
            raise TensorFormatError(f"{name!r}: dtype {dtype!r} is not supported")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise TensorFormatError(f"{name!r}: shape {shape!r} is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise TensorFormatError(f"{name!r}: data_offsets {offsets!r} outside the data")
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise TensorFormatError(
                f"{name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}"
            )
        specs.append(
            TensorSpec(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
        )
    pos = data_start
    for spec in sorted(specs, key=lambda s: (s.begin, s.end)):
        if spec.begin != pos:
            raise TensorFormatError(f"{spec.name!r}: data overlaps or leaves a gap")
        pos = spec.end
    if pos != size:
        raise TensorFormatError(f"{size - pos} bytes after the last tensor")
    return Layout(tuple(specs), dict(metadata))


def views(buf: Any, layout: Layout, framework: str) -> dict[str, Any]:
    """Tensors as views over ``buf`` (no copy). ``framework`` is ``"np"`` or ``"pt"``."""
    out: dict[str, Any] = {}
    if framework == "pt":
        import torch

        torch_dtypes = {v: getattr(torch, k) for k, v in _TORCH_NAMES.items() if hasattr(torch, k)}
        for spec in layout.specs:
            tdtype = torch_dtypes[spec.dtype]
            count = (spec.end - spec.begin) // _ITEMSIZE[spec.dtype]
            if count == 0:
                out[spec.name] = torch.empty(spec.shape, dtype=tdtype)
            else:
                flat = torch.frombuffer(buf, dtype=tdtype, count=count, offset=spec.begin)
                out[spec.name] = flat.view(spec.shape)
        return out
    for spec in layout.specs:
        np_dtype = _NP_DTYPES.get(spec.dtype)
        if np_dtype is None:
            raise TensorFormatError(
                f"{spec.name!r}: {spec.dtype} has no numpy dtype; restore with framework='torch'"
            )
        count = (spec.end - spec.begin) // np_dtype.itemsize
        arr = np.frombuffer(buf, dtype=np_dtype, count=count, offset=spec.begin)
        out[spec.name] = arr.reshape(spec.shape)
    return out
