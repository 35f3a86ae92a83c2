"""Streaming input for ImageNet-scale `tfds:` sources: decoded and resized per batch, never a whole
split in host memory.

A `StreamingDataset` stands in for `data.Dataset` when the proxy training reads a large `tfds:`
source (`data.stream`, `wanted`): images of any size are read by index from the TFDS ArrayRecord
files (`tfds.data_source` with the image feature left encoded: no TensorFlow), decoded with PIL
(JPEGs at a reduced DCT scale when the crop allows) and resized to `data.image_size` squared: a
random-resized crop (area 8-100%, aspect 3/4-4/3; Szegedy et al., 2015) and a horizontal flip for
training, the central 87.5% for validation. The searched augmentation policy then runs on the
device as for in-memory data (`augment.py`).

    dataset = stream.load("tfds:imagenet2012", val_size=10_000, seed=0, classes=200, ...)
    batches = dataset.train_batches(plan, batch_size, seed, place)   # (x, y, rows) per chunk
    for x, y, valid in dataset.eval_batches(batch_size, place): ...  # the validation split

What runs where, in one process: the main thread builds the label index and trains; each open
batch iterator has one producer thread that reads the records of its next batch and hands their
bytes to `data.workers` decode threads (PIL releases the GIL while it decodes and resizes), then
places the batch on the devices (`place`) into a queue of `data.prefetch` batches. Host memory
holds the chosen records' indices and labels (12 bytes a record), the queue and the batch being
decoded; the label index of the whole split (4 bytes a record) only while the dataset opens.

Class subset. `data.classes` needs each record's label without its image: a label index of the
split is read once (the records are parsed, their images never decoded) and cached beside the
dataset (`ma2ml_labels-SPLIT.npy`, else under ~/.cache/ma2ml_jax/labels/); afterwards only the
chosen classes' records are ever read. The class subset, the validation split carved from train
and `data.max_train` are drawn exactly as `data.load` draws them, so the two agree on the same
data.

Several hosts (`distributed.py`): host p of n owns the p-th of n contiguous index ranges of the
chosen training records (and of the validation records), shuffles its range every epoch, and reads
only it: a training batch of B images is B/n from each host, exchanged with one all-gather per
batch in the main thread (every host trains pipelines that need the whole batch), so the decoded
batches come out of the queue as host arrays and are placed after the gather. The label index is
built the same way (each host its range, then gathered) and the normalization statistics from the
hosts' shares of one seeded sample. Data order therefore depends on the number of hosts, as in
any data-parallel input pipeline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ma2ml_jax import data
from ma2ml_jax.errors import DataError

MODES = ("auto", "true", "false")
CROP_AREA = (0.08, 1.0)  # fraction of the image a training crop covers (Inception)
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect-ratio range
CENTER_CROP = 0.875  # validation: the central 87.5% (resize to size / 0.875, crop size)
STATS_IMAGES = 512  # training images sampled for the normalization mean and std
LABEL_CHUNK = 1024  # records parsed per read while the label index is built
LABELS_FILE = "ma2ml_labels-{split}.npy"


# ------------------------------------------------------------------------------------ decoding
def random_crop_box(rng: np.random.Generator, width: int, height: int
                    ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random-resized crop (torchvision's sampling): area
    CROP_AREA of the image, aspect ratio log-uniform in CROP_RATIO; after 10 misses, the largest
    central crop whose ratio lies in CROP_RATIO.
    """
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < CROP_RATIO[0]:
        h = int(round(width / CROP_RATIO[0]))
    elif width / height > CROP_RATIO[1]:
        w = int(round(height * CROP_RATIO[1]))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The central square of side CENTER_CROP * min(width, height)."""
    side = CENTER_CROP * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode(encoded: bytes, size: int, channels: int,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """An encoded image (JPEG, PNG, ...) as uint8[size, size, channels].

    With `rng`, a random-resized crop (`random_crop_box`) flipped left-right with probability 1/2
    (training); without, the central crop (`center_crop_box`, validation). The crop is resized
    bilinearly (PIL, antialiased when it shrinks).
    """
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    with Image.open(io.BytesIO(encoded)) as image:
        width, height = image.size
        box = (random_crop_box(rng, width, height) if rng is not None
               else center_crop_box(width, height))
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT domain, several times faster; take
        # the smallest scale at which the crop still covers `size` pixels (a no-op for PNG).
        shrink = min(box[2] - box[0], box[3] - box[1]) / size
        if shrink >= 2:
            image.draft(mode, (math.ceil(width / shrink), math.ceil(height / shrink)))
        sx, sy = image.size[0] / width, image.size[1] / height
        out = image.convert(mode).resize(
            (size, size), Image.Resampling.BILINEAR,
            box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    x = np.asarray(out, np.uint8).reshape(size, size, channels)
    if rng is not None and rng.random() < 0.5:
        x = x[:, ::-1]
    return x


# ------------------------------------------------------------------------------------ sources
def wanted(source: str, mode: str, data_dir: str | None = None) -> bool:
    """Whether `data.source` streams under `data.stream` = `mode`.

    "auto" streams a `tfds:` source whose images have no fixed size (ImageNet): they could not be
    stacked into one array anyway, and such datasets are the large ones. "true" streams any
    `tfds:` source; "false" never streams.
    """
    if mode not in MODES:
        raise DataError(f"data.stream={mode!r} is not one of {', '.join(MODES)}")
    is_tfds = isinstance(source, str) and source.startswith("tfds:")
    if mode == "true" and not is_tfds:
        raise DataError(f"data.stream='true' needs a tfds: source (data.source={source!r}); "
                        "digits and npz: sources are held in memory")
    if mode != "auto":
        return mode == "true"
    if not is_tfds:
        return False
    try:
        shape = _builder(source[len("tfds:"):], data_dir).info.features["image"].shape
    except Exception:  # noqa: BLE001 - data.load reports an unknown dataset in its own words
        return False
    return None in tuple(shape)[:2]


def _builder(spec: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(spec, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: unknown name or config
        raise DataError(f"tfds:{spec}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def open_split(spec: str, split: str, data_dir: str | None):
    """Random access to a split's records: `len()`, `__getitems__(indices)` -> dicts with the
    encoded "image" bytes (never decoded here) and the "label".
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(spec, split=split, data_dir=data_dir, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # not prepared, or not as ArrayRecord
        raise DataError(
            f"tfds:{spec} split {split!r} cannot be streamed with tfds.data_source "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); prepare it as "
            "ArrayRecord in data.data_dir (`tfds build NAME --file_format=array_record`)") from e


def read(source, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Records `indices` of `source`, batched where the source can (ArrayRecord reads them in
    parallel).
    """
    indices = [int(i) for i in indices]
    if not indices:
        return []
    getitems = getattr(source, "__getitems__", None)
    return getitems(indices) if getitems is not None else [source[i] for i in indices]


# ------------------------------------------------------------------------------------ hosts
def shard(n: int, index: int, count: int) -> slice:
    """The `index`-th of `count` contiguous, near-equal ranges of n items."""
    return slice(n * index // count, n * (index + 1) // count)


def allgather_ragged(local: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Every process's `local` rows concatenated in process order (process p holds lengths[p]),
    on every process: one all-gather of the rows padded to the longest.
    """
    import jax

    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    from ma2ml_jax import distributed

    longest = max(max(lengths), 1)
    # As bytes: JAX (without x64) would narrow 64-bit values on the way.
    row = int(np.prod(local.shape[1:], dtype=np.int64)) * local.dtype.itemsize
    padded = np.zeros((longest, row), np.uint8)
    padded[:len(local)] = np.ascontiguousarray(local).view(np.uint8).reshape(len(local), row)
    distributed.barrier()
    gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
    joined = np.concatenate([gathered[p, :n] for p, n in enumerate(lengths)])
    return joined.view(local.dtype).reshape(-1, *local.shape[1:])


# ------------------------------------------------------------------------------------ labels
def label_index(source, cache: Sequence[Any] = (), *, process_index: int = 0,
                process_count: int = 1, allgather: Callable = allgather_ragged) -> np.ndarray:
    """int32[N]: the label of every record of a split, from the first readable `cache` file, else
    read from the records (each host its range, then gathered; images are not decoded) and saved
    to the first writable cache file by process 0.

    Args:
      source: the split (`open_split`).
      cache: candidate `etils.epath.Path`s of the cached index, in order of preference.
      process_index, process_count: this host and the number of hosts.
      allgather: `allgather_ragged`, the collective that joins the hosts' ranges.
    """
    n = len(source)
    cached = _read_labels(cache, n)
    # Every host must take the same branch: the read is collective.
    have = allgather(np.array([cached is not None], np.int32), [1] * process_count)
    if have.all():
        return cached
    mine = shard(n, process_index, process_count)
    local = np.empty(mine.stop - mine.start, np.int32)
    for start in range(mine.start, mine.stop, LABEL_CHUNK):
        stop = min(mine.stop, start + LABEL_CHUNK)
        local[start - mine.start:stop - mine.start] = [
            int(r["label"]) for r in read(source, range(start, stop))]
    labels = allgather(local, [len(range(n)[shard(n, p, process_count)])
                               for p in range(process_count)])
    if process_index == 0:
        _write_labels(cache, labels)
    return labels


def _read_labels(cache, n: int) -> np.ndarray | None:
    for path in cache:
        try:
            with path.open("rb") as f:
                labels = np.load(f, allow_pickle=False)
        except Exception:  # noqa: BLE001 - missing, partial, or on a filesystem not reachable here
            continue
        if labels.shape == (n,) and labels.dtype == np.int32:
            return labels
    return None


def _write_labels(cache, labels: np.ndarray) -> None:
    for path in cache:
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                np.save(f, labels)
            tmp.rename(path)  # readers never see a partial file
            return
        except Exception:  # noqa: BLE001 - read-only or unreachable: the next candidate
            continue


def label_cache_paths(builder, split: str) -> list[Any]:
    """Where a split's label index is cached: beside the dataset, else in the user's cache.

    The cache is keyed by the dataset's name, config and version and checked against the number of
    records only: delete it after preparing the same version again.
    """
    from etils import epath

    home = os.environ.get("MA2ML_JAX_CACHE", os.path.join("~", ".cache", "ma2ml_jax"))
    return [epath.Path(builder.data_dir) / LABELS_FILE.format(split=split),
            epath.Path(os.path.expanduser(home)) / "labels" / builder.info.full_name
            / LABELS_FILE.format(split=split)]


# ------------------------------------------------------------------------------------ dataset
@dataclasses.dataclass(eq=False)
class StreamingDataset:
    """A classification dataset read from its records batch by batch (see the module docstring).

    Attributes:
      name: the source string.
      source: the split's records (`open_split`).
      train_records, val_records: int64[N] record indices of the training and validation images,
        ascending.
      train_labels, val_labels: int32[N] their labels in [0, num_classes).
      num_classes: number of classes (after any class subset, re-indexed).
      image_size: side of the square images the batches hold.
      channels: 1 or 3.
      mean, std: float32[C] per-channel statistics (0..255 scale) of a sample of training images.
      workers: decode threads per iterator (0: one per CPU core).
      prefetch: batches decoded ahead per iterator.
      process_index, process_count: this host and the number of hosts (`jax.process_*`).
    """

    name: str
    source: Any
    train_records: np.ndarray
    train_labels: np.ndarray
    val_records: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    image_size: int
    channels: int
    mean: np.ndarray
    std: np.ndarray
    workers: int = 0
    prefetch: int = 2
    process_index: int = 0
    process_count: int = 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.image_size, self.image_size, self.channels

    @property
    def train_size(self) -> int:
        return len(self.train_records)

    @property
    def val_size(self) -> int:
        return len(self.val_records)

    def summary(self) -> str:
        s, c = self.image_size, self.channels
        return (f"{self.name} (streamed): {s}x{s}x{c}, {self.num_classes} classes, train "
                f"{self.train_size}, val {self.val_size}")

    def local_batch(self, batch_size: int) -> int:
        """Images of a training batch this host reads."""
        if batch_size % self.process_count:
            raise DataError(f"evaluate.batch_size={batch_size} must be a multiple of the number "
                            f"of hosts ({self.process_count}): each reads its share of a batch")
        return batch_size // self.process_count

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps in an epoch: full batches of the smallest host range (at least 1)."""
        smallest = min(len(range(self.train_size)[shard(self.train_size, p, self.process_count)])
                       for p in range(self.process_count))
        return max(1, smallest // self.local_batch(batch_size))

    # ---------------------------------------------------------------------------- training
    def local_train_chunks(self, plan: Sequence[tuple[int, int, np.ndarray]], batch_size: int,
                           seed: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This host's share of the chunks of `plan`, decoded, as host arrays.

        Args:
          plan: per chunk (epoch, step0, valid bool[S]): steps step0 .. step0 + S - 1 of the epoch,
            the invalid ones padding (left as zeros, never read).
          batch_size: B, images of one step over all hosts.
          seed: the data order's seed words: epoch e visits this host's range in the order of a
            permutation seeded by (seed, e); an image's crop is seeded by (seed, e, its record).

        Yields:
          (uint8[S * B/n, H, W, C], int32[S * B/n]): step j's images in rows j*B/n .. (j+1)*B/n.
        """
        local = self.local_batch(batch_size)
        mine = shard(self.train_size, self.process_index, self.process_count)
        records, labels = self.train_records[mine], self.train_labels[mine]
        seed = [int(s) for s in seed]
        order, order_epoch = None, None
        with self._pool() as pool:
            for epoch, step0, valid in plan:
                if epoch != order_epoch:
                    order = np.random.default_rng([*seed, epoch]).permutation(len(records))
                    order_epoch = epoch
                steps = len(valid)
                x = np.zeros((steps * local, *self.image_shape), np.uint8)
                y = np.zeros(steps * local, np.int32)
                rows, picked = [], []
                for j in np.flatnonzero(valid):
                    first = (step0 + j) * local
                    take = order[first:first + local]
                    rows.extend(range(j * local, j * local + len(take)))
                    picked.extend(take)
                picked = np.asarray(picked, np.int64)
                y[rows] = labels[picked]
                self._decode_into(pool, x, rows, records[picked],
                                  [np.random.default_rng([*seed, epoch, int(r)])
                                   for r in records[picked]])
                yield x, y

    def train_batches(self, plan: Sequence[tuple[int, int, np.ndarray]], batch_size: int,
                      seed: Sequence[int], place: Callable[[Any], Any]) -> Batches:
        """The chunks of `plan` over all hosts, prefetched: an iterator (close it) of
        (x uint8[S*B, H, W, C], y int32[S*B], rows int32[S, B]), x and y placed by `place`;
        step j of the chunk trains on `x[rows[j]]`. See `local_train_chunks`.
        """
        steps = len(plan[0][2]) if plan else 1
        local = self.local_batch(batch_size)
        # The gather concatenates the hosts' chunks: host p's step j sits at p*S*B/n + j*B/n.
        rows = (np.arange(self.process_count)[None, :, None] * steps * local
                + np.arange(steps)[:, None, None] * local
                + np.arange(local)[None, None, :]).reshape(steps, -1).astype(np.int32)
        n = self.process_count
        chunks = self.local_train_chunks(plan, batch_size, seed)
        return Batches(chunks, self.prefetch, place, n,
                       lambda tree: tuple(allgather_ragged(a, [len(a)] * n) for a in tree),
                       extra=(rows,))

    # ---------------------------------------------------------------------------- validation
    def local_eval_chunks(self, batch_size: int) -> Iterator[tuple[np.ndarray, ...]]:
        """This host's share of the validation batches: (uint8[b, H, W, C], int32[b], bool[b])
        with b = ceil(min(batch_size, val_size) / hosts), the rows past its range invalid; every
        host yields the same number of batches.
        """
        n = self.process_count
        local = -(-min(batch_size, self.val_size) // n)
        sizes = [len(range(self.val_size)[shard(self.val_size, p, n)]) for p in range(n)]
        mine = shard(self.val_size, self.process_index, n)
        records, labels = self.val_records[mine], self.val_labels[mine]
        with self._pool() as pool:
            for first in range(0, max(sizes), local):
                x = np.zeros((local, *self.image_shape), np.uint8)
                y = np.zeros(local, np.int32)
                take = np.arange(first, min(first + local, len(records)))
                y[:len(take)] = labels[take]
                self._decode_into(pool, x, range(len(take)), records[take], None)
                yield x, y, np.arange(local) < len(take)

    def eval_batches(self, batch_size: int, place: Callable[[Any], Any]) -> Batches:
        """The validation split in batches over all hosts, prefetched: an iterator (close it) of
        (x, y, valid) placed by `place`; each image occurs once with `valid` True.
        """
        n = self.process_count
        return Batches(self.local_eval_chunks(batch_size), self.prefetch, place, n,
                       lambda tree: tuple(allgather_ragged(a, [len(a)] * n) for a in tree))

    # ---------------------------------------------------------------------------- decoding
    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(
            self.workers or os.cpu_count() or 1, thread_name_prefix="ma2ml-decode")

    def _decode_into(self, pool, x: np.ndarray, rows: Sequence[int], records: np.ndarray,
                     rngs: Sequence[np.random.Generator] | None) -> None:
        """Reads `records` and decodes them into `x[rows]` (random crops when `rngs` is given)."""
        examples = read(self.source, records)

        def one(k):
            x[rows[k]] = decode(examples[k]["image"], self.image_size, self.channels,
                                rngs[k] if rngs is not None else None)

        for _ in pool.map(one, range(len(examples))):  # re-raises a worker's error
            pass


class Batches:
    """Batches made by a producer thread, at most `depth` ahead of the consumer.

    In one process the thread also places each batch (`place`), so that the devices' copies are
    made ahead too; with several processes a batch is first gathered over the hosts (`gather`, a
    collective, so in the consuming thread, in the same order on every host) and placed after.
    Iterate it to the end or `close()` it (also a context manager): the thread stops with it.
    """

    _END = object()

    def __init__(self, items: Iterator[tuple], depth: int, place: Callable[[Any], Any],
                 process_count: int, gather: Callable[[tuple], tuple], extra: tuple = ()):
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._place, self._gather, self._extra = place, gather, extra
        self._local = process_count > 1
        self._thread = threading.Thread(target=self._produce, args=(items,), daemon=True,
                                        name="ma2ml-stream")
        self._thread.start()

    def _produce(self, items) -> None:
        try:
            for item in items:
                if not self._local:
                    item = self._place(item)
                if not self._put(item):
                    break
            else:
                self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failure(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's pool shuts down in its own thread

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # later calls stop too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        if self._local:
            item = self._place(self._gather(item))
        return (*item, *self._extra)

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # frees the producer blocked on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class _Failure:
    error: BaseException


# ------------------------------------------------------------------------------------ loading
def load(source: str, *, val_size: int, seed: int = 0, classes: int = 0, num_classes: int = 0,
         data_dir: str | None = None, max_train: int = 0, image_size: int = 224,
         workers: int = 0, prefetch: int = 2, process_index: int | None = None,
         process_count: int | None = None) -> StreamingDataset:
    """Opens a `tfds:` source's train split for streaming; the arguments mean what they mean for
    `data.load` (the same class subset, validation split and `max_train` cap for the same seed),
    plus:

    Args:
      image_size: side of the square images of every batch.
      workers: decode threads per iterator (0: one per CPU core).
      prefetch: batches decoded ahead.
      process_index, process_count: this host and the number of hosts (default: JAX's).

    Returns:
      The `StreamingDataset` (the test split is left to the final retraining).

    Raises:
      DataError: unknown or unprepared dataset, missing features, bad sizes or labels.
    """
    import jax

    if not isinstance(source, str) or not source.startswith("tfds:") or source == "tfds:":
        raise DataError(f"only tfds:NAME sources stream (data.source={source!r})")
    if image_size < 1 or workers < 0 or prefetch < 1:
        raise DataError(f"data.image_size={image_size} and data.prefetch={prefetch} must be >= 1 "
                        f"and data.workers={workers} >= 0")
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    spec = source[len("tfds:"):]
    builder = _builder(spec, data_dir)
    if "train" not in builder.info.splits:
        from ma2ml_jax.prepare import how_to_prepare

        root = str(builder.data_dir_root)
        manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
        raise DataError(f"{source} is not prepared in {root}; "
                        f"{how_to_prepare(spec, root, manual)}; then run with "
                        f"--config.data.data_dir={root}")
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"{source} has no 'image' and 'label' features (features: "
                        f"{sorted(features)})")
    channels = tuple(features["image"].shape)[-1] or 3
    if channels not in (1, 3):
        raise DataError(f"{source}: images have {channels} channels; expected 1 or 3")
    records = open_split(spec, "train", data_dir)
    labels = label_index(records, label_cache_paths(builder, "train"), process_index=p,
                         process_count=n)
    if labels.min(initial=0) < 0:
        raise DataError(f"{source}: labels must be integers in [0, num_classes); found negative")
    top = int(labels.max(initial=-1))
    if num_classes and top >= num_classes:
        raise DataError(f"{source}: label {top} is out of range for data.num_classes="
                        f"{num_classes}; labels must lie in 0..{num_classes - 1}")
    num_classes = num_classes or getattr(features["label"], "num_classes", 0) or top + 1

    # The draws of data.load, so that both pick the same images.
    train, val, remap, num_classes = data.seeded_split(labels, num_classes, classes, val_size,
                                                       max_train, seed, source)
    val = np.sort(val)
    if remap is not None:
        labels = remap[labels]
    dataset = StreamingDataset(source, records, train, labels[train], val, labels[val],
                               num_classes, image_size, channels, np.zeros(channels, np.float32),
                               np.ones(channels, np.float32), workers, prefetch, p, n)
    mean, std = statistics(dataset, seed)
    return dataclasses.replace(dataset, mean=mean, std=std)


def statistics(dataset: StreamingDataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (0..255) of up to STATS_IMAGES training images (seeded sample,
    centre crops): each host decodes the sampled images of its range, a batch at a time; the
    per-image integer sums are gathered, so every host gets the same numbers whatever their count.
    """
    n = dataset.process_count
    total = dataset.train_size
    sample = np.sort(np.random.default_rng([seed, 0x5354]).choice(
        total, min(STATS_IMAGES, total), replace=False))
    ranges = [shard(total, p, n) for p in range(n)]
    mine = sample[(sample >= ranges[dataset.process_index].start)
                  & (sample < ranges[dataset.process_index].stop)]
    c = dataset.channels
    sums = np.zeros((len(mine), 2 * c), np.uint64)
    step = 16  # images decoded at once: the sample is never held whole
    with dataset._pool() as pool:
        for first in range(0, len(mine), step):
            part = mine[first:first + step]
            x = np.zeros((len(part), *dataset.image_shape), np.uint8)
            dataset._decode_into(pool, x, range(len(part)), dataset.train_records[part], None)
            pixels = x.reshape(len(part), -1, c).astype(np.uint32)
            sums[first:first + len(part), :c] = pixels.sum(1, dtype=np.uint64)
            sums[first:first + len(part), c:] = (pixels * pixels).sum(1, dtype=np.uint64)
    sums = allgather_ragged(sums, [int(((sample >= r.start) & (sample < r.stop)).sum())
                                   for r in ranges]).sum(0, dtype=np.uint64)
    count = len(sample) * dataset.image_size ** 2
    mean = sums[:c].astype(np.float64) / count
    var = sums[c:].astype(np.float64) / count - mean ** 2
    return (mean.astype(np.float32),
            np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-3).astype(np.float32))
