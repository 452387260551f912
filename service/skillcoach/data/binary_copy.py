"""PostgreSQL binary COPY for fixed-width columns, encoded and decoded with numpy.

With only fixed-width, non-NULL columns every row of the binary COPY format has the same
byte layout, so a whole chunk is one numpy structured array: no per-row Python, no text
formatting of numbers or timestamps (the slow part of a text COPY of a million rows).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import psycopg2.extensions

__all__ = [
    "PG_EPOCH_US",
    "BinaryCopyError",
    "copy_from_columns",
    "copy_to_columns",
    "decode",
    "encode",
]

# Binary timestamps count microseconds from 2000-01-01 UTC.
PG_EPOCH_US = 946_684_800 * 1_000_000

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)

_WIRE: dict[str, str] = {
    "bool": "u1",
    "int2": ">i2",
    "int4": ">i4",
    "int8": ">i8",
    "float8": ">f8",
    "timestamptz": ">i8",  # microseconds since the Unix epoch in, shifted to PG's epoch
}


class BinaryCopyError(ValueError):
    """The COPY stream is not in the expected shape (NULLs, unknown header, wrong width)."""


def _row_dtype(types: Sequence[str]) -> np.dtype[np.void]:
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, pg_type in enumerate(types):
        if pg_type not in _WIRE:
            raise BinaryCopyError(f"unsupported column type {pg_type!r}")
        fields += [(f"len{i}", ">i4"), (f"v{i}", _WIRE[pg_type])]
    # Packed (no alignment padding): the wire layout has none.
    return np.dtype(fields)


def encode(columns: Sequence[tuple[str, npt.ArrayLike]]) -> bytes:
    """One binary COPY payload (header, rows, trailer) from (pg_type, values) columns."""
    types = [t for t, _ in columns]
    arrays = [np.asarray(v) for _, v in columns]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        raise BinaryCopyError("columns differ in length")
    dtype = _row_dtype(types)
    rows = np.empty(n, dtype=dtype)
    rows["n"] = len(columns)
    for i, (pg_type, values) in enumerate(zip(types, arrays, strict=True)):
        rows[f"len{i}"] = np.dtype(_WIRE[pg_type]).itemsize
        if pg_type == "timestamptz":
            values = values.astype(np.int64) - PG_EPOCH_US
        rows[f"v{i}"] = values
    return _HEADER + rows.tobytes() + _TRAILER


def decode(payload: bytes, types: Sequence[str]) -> list[npt.NDArray[np.generic]]:
    """Columns (native byte order; timestamps as Unix microseconds) of a binary COPY payload."""
    if not payload.startswith(_SIGNATURE):
        raise BinaryCopyError("not a binary COPY stream")
    flags, ext_len = struct.unpack_from("!ii", payload, len(_SIGNATURE))
    if flags & (1 << 16):
        raise BinaryCopyError("COPY stream carries OIDs")
    start = len(_SIGNATURE) + 8 + ext_len
    if payload[-2:] != _TRAILER:
        raise BinaryCopyError("COPY stream lacks its trailer")
    body = memoryview(payload)[start:-2]
    dtype = _row_dtype(types)
    if len(body) % dtype.itemsize:
        raise BinaryCopyError("COPY rows are not fixed-width (NULL or unexpected type?)")
    rows = np.frombuffer(body, dtype=dtype)
    if len(rows) and (rows["n"] != len(types)).any():
        raise BinaryCopyError("unexpected number of columns")
    out: list[npt.NDArray[np.generic]] = []
    for i, pg_type in enumerate(types):
        width = np.dtype(_WIRE[pg_type]).itemsize
        if len(rows) and (rows[f"len{i}"] != width).any():
            raise BinaryCopyError(f"column {i} has NULLs or a width other than {width}")
        values = rows[f"v{i}"]
        if pg_type == "bool":
            out.append(values.astype(np.bool_))
        elif pg_type == "timestamptz":
            out.append(values.astype(np.int64) + PG_EPOCH_US)
        else:
            out.append(values.astype(values.dtype.newbyteorder("=")))
    return out


def copy_from_columns(
    cursor: psycopg2.extensions.cursor,
    table: str,
    columns: Sequence[tuple[str, str, npt.ArrayLike]],
) -> None:
    """COPY (name, pg_type, values) columns into table; a no-op for zero rows."""
    if len(columns) == 0 or len(np.asarray(columns[0][2])) == 0:
        return
    names = ", ".join(name for name, _, _ in columns)
    payload = encode([(pg_type, values) for _, pg_type, values in columns])
    cursor.copy_expert(
        f"COPY {table} ({names}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(payload)
    )


def copy_to_columns(
    cursor: psycopg2.extensions.cursor, query: str, types: Sequence[str]
) -> list[npt.NDArray[np.generic]]:
    buffer = io.BytesIO()
    cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", buffer)
    return decode(buffer.getvalue(), types)
