"""TensorBoard scalars without TensorFlow: `ScalarWriter` and `read_scalars`.

An event file is TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of
the data) around hand-encoded `Event` protos; a scalar is an `Event` whose `Summary.Value` carries
a `simple_value`. TensorBoard reads these files as it reads TensorFlow's.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping


class ScalarWriter:
    """Writes scalars as a TensorBoard event file in `logdir` (no TensorFlow needed).

        writer = ScalarWriter(os.path.join(workdir, "tensorboard"))
        writer.scalars({"reward/max": 0.9, "reward/mean": 0.7}, step=3)
        writer.close()

    Each call appends one record and flushes, so TensorBoard shows a running search.
    """

    _count = itertools.count()

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(self._count)}")
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.scalars({name: value}, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        summary = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) +
                                        _field_fixed32(2, float(v)))
                           for tag, v in values.items())
        self._write(_event(time.time(), int(step), summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", masked_crc32c(length)) + record +
                         struct.pack("<I", masked_crc32c(record)))
        self._file.flush()


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from an event file or every event file of a folder.

    Checks every CRC (ValueError on a mismatch); a record cut at the end (a killed writer) is
    left out.
    """
    files = ([os.path.join(path, f) for f in sorted(os.listdir(path)) if "tfevents" in f]
             if os.path.isdir(path) else [path])
    out: dict[str, list[tuple[int, float]]] = {}
    for name in files:
        for record in _records(name):
            event = _parse(record)
            step = event.get(2, [0])[0]
            for summary in event.get(5, []):
                for value in _parse(summary).get(1, []):
                    v = _parse(value)
                    if 2 in v:
                        tag = v[1][0].decode()
                        out.setdefault(tag, []).append((step, struct.unpack("<f", v[2][0])[0]))
    return out


def _records(path: str):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        head = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", head)
        (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if crc != masked_crc32c(head):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        if pos + 16 + n > len(data):
            return  # cut at the end
        record = data[pos + 12:pos + 12 + n]
        (crc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
        if crc != masked_crc32c(record):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        yield record
        pos += 16 + n


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses it."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# Protocol buffer wire format, enough for tensorflow.Event (wall_time = 1: double, step = 2:
# int64, file_version = 3: string, summary = 5: Summary), Summary (value = 1: repeated Value) and
# Summary.Value (tag = 1: string, simple_value = 2: float).
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _field_fixed32(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           summary: bytes | None = None) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _parse(buf: bytes) -> dict[int, list]:
    """{field: [values]}: varints as ints, fixed64/fixed32/length-delimited as raw bytes."""
    out: dict[int, list] = {}
    pos = 0

    def varint():
        nonlocal pos
        n = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            n = varint()
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(field, []).append(value)
    return out

