"""Checking a .safetensors file from its header alone before any library opens it.

The rules are the safetensors library's own (a known dtype, offsets that match the shape and tile the
data section exactly, string metadata, a header under 100 MB), plus limits of ours that keep a hostile
header from costing seconds or gigabytes to parse. Every refusal is a one-line NegaloraError naming the
file; tensor data is never read, and a pickle is recognised and refused without being unpickled.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from negalora.errors import NegaloraError

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
# Real SDXL checkpoints list ~2,500 tensors and LoRAs 1,000-2,000 (LyCORIS formats a few times that).
MAX_TENSORS = 50_000
# Every JSON value after the first in a container needs a comma, so commas + brackets + braces bound the values
# json.loads would build. 100 MB of "[],[],..." takes 15 s to parse; a million values well under one. Real
# headers need ~10 per tensor.
MAX_JSON_ITEMS = 1_000_000

# Bytes per element of every dtype safetensors 0.8 reads that PyTorch loads as plain tensors.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
# In the format, but packed several to a byte: PyTorch has no type for the 6-bit ones, and reads F4 as pairs
# (or not at all, through safetensors.torch.load). No SDXL model or LoRA uses them.
_SUB_BYTE = frozenset({"F4", "F6_E2M3", "F6_E3M2"})

_USIZE = 2**64  # the library holds shapes and offsets in 64-bit unsigned integers


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets into the data section, which starts after the header
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_bytes: int  # the JSON header's length; the data section starts at 8 + header_bytes
    tensors: dict[str, TensorInfo]  # in the header's order
    metadata: dict[str, str]


class _Bad(Exception):
    """A reason to refuse the file; check_safetensors adds the path."""


def check_safetensors(path: Path) -> SafetensorsHeader:
    """The file's validated header, or a NegaloraError saying why the file cannot be loaded safely."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise NegaloraError(
            f"{path}: {path.suffix} files are Python pickles, which can run code when loaded; "
            "negalora only loads .safetensors"
        )
    if suffix != ".safetensors":
        raise NegaloraError(f"{path}: not a .safetensors file")
    if path.exists() and not path.is_file():
        raise NegaloraError(f"{path}: not a regular file")  # opening a FIFO would block
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            try:
                raw = _read_header(fh, head, size)
                header = _parse(raw)
            except _Bad:
                if _looks_pickled(head):
                    raise _Bad(
                        "a PyTorch pickle renamed .safetensors (pickles can run code when loaded; not opened)"
                    ) from None
                raise
        metadata = _metadata(header.pop("__metadata__", None))
        tensors = _tensors(header, size - 8 - len(raw))
    except OSError as exc:
        raise NegaloraError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except _Bad as exc:
        raise NegaloraError(f"{path}: {exc}") from None
    return SafetensorsHeader(path, len(raw), tensors, metadata)


def _looks_pickled(head: bytes) -> bool:
    """torch.save writes a zip, older versions a bare pickle (protocol 2 or later starts with 0x80)."""
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _read_header(fh, head: bytes, size: int) -> bytes:
    if size == 0:
        raise _Bad("empty file (0 bytes)")
    if len(head) < 8:
        raise _Bad(f"truncated .safetensors file ({size} bytes; the header length alone takes 8)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise _Bad(f"corrupt .safetensors file (header length {n:,} is over the {MAX_HEADER_BYTES:,} byte limit)")
    if n > size - 8:
        raise _Bad(f"truncated .safetensors file (the header claims {n:,} bytes; the file has {size - 8:,} after it)")
    raw = fh.read(n)
    if len(raw) < n:
        raise _Bad("truncated .safetensors file (the header is cut short)")
    return raw


def _parse(raw: bytes) -> dict:
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        raise _Bad("corrupt .safetensors header (not a JSON object)")
    # Cheap counts over the bytes, before json.loads can spend seconds and gigabytes on them.
    listed = raw.count(b'"data_offsets"')
    if listed > MAX_TENSORS:
        raise _Bad(f"the header lists {listed:,} tensors (the limit is {MAX_TENSORS:,}); not a real checkpoint")
    items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if items > MAX_JSON_ITEMS:
        raise _Bad(f"corrupt .safetensors header (over {MAX_JSON_ITEMS:,} JSON values; real headers hold far fewer)")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise _Bad("corrupt .safetensors header (not UTF-8)") from None
    except RecursionError:
        raise _Bad("corrupt .safetensors header (JSON nested too deeply)") from None
    except json.JSONDecodeError as exc:
        raise _Bad(f"corrupt .safetensors header (not JSON: {exc.msg} at character {exc.pos})") from None
    except ValueError as exc:
        raise _Bad(f"corrupt .safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise _Bad("corrupt .safetensors header (not a JSON object)")
    return header


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; the library does not


def _metadata(value) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("corrupt .safetensors header (__metadata__ is not an object)")
    for key, text in value.items():
        if not isinstance(text, str):
            raise _Bad(f"corrupt .safetensors header (metadata {_short(key)} is {type(text).__name__}, not a string)")
        _utf8(key, "metadata name")
        _utf8(text, f"metadata {_short(key)}")
    return value


def _tensors(header: dict, data_bytes: int) -> dict[str, TensorInfo]:
    if len(header) > MAX_TENSORS:
        raise _Bad(f"the header lists {len(header):,} tensors (the limit is {MAX_TENSORS:,}); not a real checkpoint")
    tensors = {name: _tensor(name, info, data_bytes) for name, info in header.items()}
    _check_layout(tensors, data_bytes)
    return tensors


def _tensor(name: str, info, data_bytes: int) -> TensorInfo:
    _utf8(name, "tensor name")
    if not isinstance(info, dict):
        raise _Bad(f"corrupt .safetensors header (tensor {_short(name)} is not an object)")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise _Bad(f"corrupt .safetensors header (tensor {_short(name)} has no {field})")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if isinstance(dtype, str) and dtype in _SUB_BYTE:
        raise _Bad(f"tensor {_short(name)} has dtype {dtype}, a sub-byte float negalora cannot load")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _Bad(f"tensor {_short(name)} has an unknown dtype {_short(dtype)}")
    if not _counts(shape):
        raise _Bad(f"tensor {_short(name)} has a bad shape {_short(shape)}")
    if not _counts(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise _Bad(f"tensor {_short(name)} has bad data_offsets {_short(offsets)}")
    start, end = offsets
    size = _nbytes(shape, DTYPE_SIZES[dtype], limit=max(data_bytes, _USIZE))
    if size != end - start:
        need = "more bytes than the file holds" if size is None else f"{size} bytes"
        raise _Bad(f"tensor {_short(name)}: {dtype} {_short(shape)} needs {need}, its offsets span {end - start}")
    return TensorInfo(dtype, tuple(shape), start, end)


def _counts(value) -> bool:
    """A list of non-negative integers that fit the library's 64-bit sizes (bools are not integers here)."""
    return isinstance(value, list) and all(type(v) is int and 0 <= v < _USIZE for v in value)


def _nbytes(shape: list[int], size: int, limit: int) -> int | None:
    """prod(shape) * size, or None once it passes ``limit`` (a shape of many huge dims is never multiplied out)."""
    if 0 in shape:
        return 0
    total = size
    for dim in shape:
        total *= dim
        if total > limit:
            return None
    return total


def _check_layout(tensors: dict[str, TensorInfo], data_bytes: int) -> None:
    """The library's rule: sorted by offset, the tensors tile the data section with no gap, overlap or tail."""
    end = max((t.end for t in tensors.values()), default=0)
    if end > data_bytes:
        raise _Bad(f"truncated .safetensors file (the header needs {end:,} data bytes; the file holds {data_bytes:,})")
    expected = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if t.start < expected:
            raise _Bad(f"tensor {_short(name)} overlaps the tensor before it (its data starts at {t.start:,})")
        if t.start > expected:
            raise _Bad(f"gap in the tensor data (bytes {expected:,}-{t.start:,} unused before tensor {_short(name)})")
        expected = t.end
    if expected != data_bytes:
        raise _Bad(f"corrupt .safetensors file ({data_bytes - expected:,} bytes after the last tensor)")


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"corrupt .safetensors header ({what} is not valid UTF-8)") from None


def _short(value, limit: int = 80) -> str:
    """A value for a one-line message: repr escapes newlines, and a hostile value may be megabytes long."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, dict) or (isinstance(value, list) and len(value) > 16):
        text = f"<{type(value).__name__} of {len(value)}>"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
