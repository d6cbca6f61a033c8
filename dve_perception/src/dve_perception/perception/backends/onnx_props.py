"""Read an exported file's `ExportMetadata` without the onnx package.

Jetson deployments often have TensorRT but not onnx (an `[export]` extra), and the engine cache
needs the export size of the file it builds from. ONNX files are protobuf `ModelProto`s; this
walks the top level of the wire format, skips the (large) graph with one seek, and decodes only
`metadata_props` (field 14, entries of key = 1 and value = 2).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from dve_perception.errors import CheckpointError
from dve_perception.perception.backends.export_metadata import ExportMetadata

__all__ = ["read_onnx_export_metadata"]

_METADATA_PROPS = 14


def read_onnx_export_metadata(path: str | Path) -> ExportMetadata:
    """Read the `ExportMetadata` of an ONNX file (see the module docstring).

    Raises:
        CheckpointError: the file is missing, not ONNX, or has no dve_perception metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist")
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as file:
            for field_number, payload in _top_level_fields(file, wanted=_METADATA_PROPS):
                if field_number == _METADATA_PROPS:
                    entry = dict(_message_fields(payload))
                    props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not an ONNX model: {err}") from err
    return ExportMetadata.from_props(props, str(path))


def _read_varint(read: Callable[[int], bytes]) -> int | None:
    result, shift = 0, 0
    while True:
        byte = read(1)
        if not byte:
            if shift:
                raise ValueError("truncated varint")
            return None
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _top_level_fields(file: BinaryIO, wanted: int) -> Iterator[tuple[int, bytes]]:
    """Yield (field number, bytes) of length-delimited fields numbered `wanted`; skip others."""
    while (tag := _read_varint(file.read)) is not None:
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _read_varint(file.read)
        elif wire_type in (1, 5):
            file.seek(8 if wire_type == 1 else 4, 1)
        elif wire_type == 2:
            length = _read_varint(file.read)
            if length is None:
                raise ValueError("truncated length")
            if number != wanted:
                file.seek(length, 1)
                continue
            payload = file.read(length)
            if len(payload) != length:
                raise ValueError(f"field {number} truncated")
            yield number, payload
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _message_fields(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (field number, bytes) of a small message made only of length-delimited fields."""
    file = io.BytesIO(payload)
    while (tag := _read_varint(file.read)) is not None:
        if tag & 7 != 2:
            raise ValueError(f"unexpected wire type {tag & 7} in a metadata entry")
        length = _read_varint(file.read)
        value = file.read(length or 0)
        if length is None or len(value) != length:
            raise ValueError("metadata entry truncated")
        yield tag >> 3, value
