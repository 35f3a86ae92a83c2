"""TensorBoard scalars without TensorFlow: `ScalarWriter` (tensorboardX) and `read_scalars`.

`ScalarWriter` writes a search's per-iteration scalars with tensorboardX's `SummaryWriter`,
flushed at every call so that TensorBoard follows a running search. `read_scalars` reads event
files back (TFRecord framing around tensorboardX's `Event` protos) for tests and scripts.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Mapping

from tensorboardX import SummaryWriter
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2


class ScalarWriter:
    """Writes scalars as a TensorBoard event file in `logdir`.

    writer = ScalarWriter(os.path.join(workdir, "tensorboard"))
    writer.scalars({"reward/max": 0.9, "reward/mean": 0.7}, step=3)
    writer.close()
    """

    def __init__(self, logdir: str):
        suffix = f".{uuid.uuid4().hex[:8]}"
        self._writer = SummaryWriter(logdir, filename_suffix=suffix)
        self.path = next(os.path.join(logdir, f) for f in os.listdir(logdir)
                         if f.startswith("events.out.tfevents.") and f.endswith(suffix))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.scalars({name: value}, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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
