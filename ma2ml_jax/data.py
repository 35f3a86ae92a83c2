"""Dataset sources -> uint8 NHWC arrays with train / val / test splits and normalization statistics.

Sources (the `data.source` config value):
  * ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download).
    It has no official test split: a fixed 20% (seed 0, independent of the search seed) is the test
    split so that test numbers are comparable across runs.
  * ``tfds:NAME[/CONFIG]``: a TensorFlow Datasets dataset that is already prepared in `data_dir`
    (cifar10, cifar100, imagenet2012, ...). Read with `tfds.data_source` (random access, no
    TensorFlow needed) where the prepared files are ArrayRecord; else with `tfds.load`, which
    needs TensorFlow installed. `classes` picks a seeded random class subset (ImageNet-200).
  * ``npz:PATH``: a user's own arrays `x_train`, `y_train`, `x_test`, `y_test`.

The validation split (the search reward) is carved from train by a seeded permutation; the test
split is touched only by the final retraining.
"""

from __future__ import annotations

import os
import shlex
from typing import NamedTuple

import numpy as np

from ma2ml_jax.errors import DataError

SOURCES = ("digits", "tfds:NAME[/CONFIG]", "npz:PATH")
DIGITS_TEST_FRACTION = 0.2


class Dataset(NamedTuple):
    """A classification dataset held in host memory.

    Attributes:
      name: the source string it was loaded from.
      x_train, x_val, x_test: uint8[N, H, W, C] images.
      y_train, y_val, y_test: int32[N] labels in [0, num_classes).
      num_classes: number of classes (after any class subset, labels are re-indexed).
      mean, std: float32[C] per-channel statistics of x_train in the 0..255 scale.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        h, w, c = self.image_shape
        return (f"{self.name}: {h}x{w}x{c}, {self.num_classes} classes, train {len(self.y_train)}, "
                f"val {len(self.y_val)}, test {len(self.y_test)}")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps in one epoch (the last partial batch is dropped, at least one step)."""
    return max(1, num_examples // batch_size)


def seeded_split(labels: np.ndarray, num_classes: int, classes: int, val_size: int,
                 max_train: int, seed: int, source: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """The seeded class subset and train / validation split of a train split's labels.

    `load` and `stream.load` both draw through here, so that in memory and streamed a seed picks
    the same classes and images.

    Returns:
      (train indices, sorted; validation indices, in draw order; the label remap of the class
      subset (-1 for a dropped class) or None; the number of classes).
    """
    rng = np.random.default_rng(seed)
    chosen, remap = np.arange(len(labels)), None
    if classes:
        if not 1 < classes <= num_classes:
            raise DataError(f"{source}: data.classes={classes} but the data has {num_classes} "
                            f"classes; choose 2..{num_classes} (or 0 for all)")
        keep = np.sort(rng.choice(num_classes, classes, replace=False))
        remap = np.full(num_classes, -1, np.int32)
        remap[keep] = np.arange(classes)
        chosen = np.flatnonzero(np.isin(labels, keep))
        num_classes = classes
    if not 0 < val_size < len(chosen):
        raise DataError(f"{source}: data.val_size={val_size} must be in 1..{len(chosen) - 1} "
                        f"(the train split has {len(chosen)} images)")
    perm = rng.permutation(len(chosen))
    val, train = perm[:val_size], perm[val_size:]
    if max_train and max_train < len(train):
        train = train[:max_train]
    return chosen[np.sort(train)], chosen[val], remap, num_classes


def load(source: str, *, val_size: int, seed: int = 0, classes: int = 0,
         data_dir: str | None = None, max_train: int = 0, num_classes: int = 0) -> Dataset:
    """Loads a dataset and carves the validation split from train.

    Args:
      source: ``digits``, ``tfds:NAME[/CONFIG]`` or ``npz:PATH``.
      val_size: number of training images held out for validation (the search reward).
      seed: seed of the validation split and of the class subset.
      classes: if > 0, keep a seeded random subset of this many classes (re-indexed 0..classes-1).
      data_dir: TFDS data directory (None: TFDS's default).
      max_train: if > 0, keep at most this many training images (after the val split), seeded.
      num_classes: if > 0, the declared number of classes: labels must lie in [0, num_classes).

    Returns:
      The `Dataset`.

    Raises:
      DataError: unknown source, missing file or keys, mismatched shapes, labels out of range.
    """
    if not isinstance(source, str) or not source:
        raise DataError(f"data.source is empty; valid sources: {', '.join(SOURCES)}")
    if source == "digits":
        x_train, y_train, x_test, y_test = _digits()
    elif source.startswith("tfds:"):
        x_train, y_train, x_test, y_test = _tfds(source[len("tfds:"):], data_dir)
    elif source.startswith("npz:"):
        x_train, y_train, x_test, y_test = _npz(source[len("npz:"):])
    else:
        raise DataError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")

    x_train, x_test = _as_nhwc(x_train, "x_train", source), _as_nhwc(x_test, "x_test", source)
    y_train, y_test = _as_labels(y_train, "y_train", source), _as_labels(y_test, "y_test", source)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} images but y_{split} has "
                            f"{len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{source}: train images are {x_train.shape[1:]} but test images are "
                        f"{x_test.shape[1:]}; both splits need one image shape")
    top = int(max(y_train.max(initial=-1), y_test.max(initial=-1)))
    if y_train.min(initial=0) < 0 or y_test.min(initial=0) < 0:
        raise DataError(f"{source}: labels must be integers in [0, num_classes); found negative")
    if num_classes and top >= num_classes:
        raise DataError(f"{source}: label {top} is out of range for data.num_classes="
                        f"{num_classes}; labels must lie in 0..{num_classes - 1}")
    num_classes = num_classes or top + 1
    if test_only := sorted(set(np.unique(y_test)) - set(np.unique(y_train))):
        raise DataError(f"{source}: labels {test_only[:5]} occur in test but never in train")

    train_idx, val_idx, remap, num_classes = seeded_split(
        y_train, num_classes, classes, val_size, max_train, seed, source)
    if remap is not None:
        te = remap[y_test] >= 0
        x_test, y_test = x_test[te], remap[y_test[te]]
        y_train = remap[y_train]
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]

    pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    mean = pixels.mean(0).astype(np.float32)
    std = np.maximum(pixels.std(0), 1e-3).astype(np.float32)
    return Dataset(source, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, mean, std)


# ------------------------------------------------------------------------------------ sources
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are counts 0..16 of a 4x4 block; rescale to the usual 0..255 image range.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = int(round(DIGITS_TEST_FRACTION * len(y)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train], y[train], x[test], y[test]


def _npz(path: str):
    path = os.path.expanduser(path)
    if not path:
        raise DataError("npz source needs a path: npz:PATH")
    if not os.path.isfile(path):
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; an npz source needs x_train, "
                                f"y_train, x_test, y_test (found {sorted(f.files)})")
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    except DataError:
        raise
    except Exception as e:  # a corrupt or non-npz file: say so in one line
        raise DataError(f"cannot read {path} as .npz: {type(e).__name__}: {e}") from e


def _tfds(spec: str, data_dir: str | None):
    if not spec:
        raise DataError("tfds source needs a dataset name: tfds:NAME[/CONFIG], e.g. tfds:cifar10")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # a dependency missing from this environment
        raise DataError(f"tfds sources need tensorflow_datasets, which does not import here "
                        f"({type(e).__name__}: {e}); `pip install -r requirements.txt`") from e

    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: unknown name or config
        raise DataError(f"tfds:{spec}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    # Prepared datasets list their splits; ImageNet's test labels are its 'validation' split.
    splits = set(builder.info.splits) or {"train", "test"}
    if "train" not in splits:
        raise DataError(f"tfds:{spec} has no 'train' split (splits: {sorted(splits)})")
    test_split = "test" if "test" in splits else "validation" if "validation" in splits else None
    if test_split is None:
        raise DataError(f"tfds:{spec} has no 'test' or 'validation' split (splits: "
                        f"{sorted(splits)})")
    return (*_read_tfds_split(tfds, spec, "train", data_dir),
            *_read_tfds_split(tfds, spec, test_split, data_dir))


def _image_label(example, spec):
    if "image" not in example or "label" not in example:
        raise DataError(f"tfds:{spec} has no 'image' and 'label' features (features: "
                        f"{sorted(example)})")
    return np.asarray(example["image"]), np.asarray(example["label"])


def _read_tfds_split(tfds, spec, split, data_dir):
    try:
        # download=False: preparing is a step of its own (TFDS's CIFAR and ImageNet builders
        # need TensorFlow), which the error below spells out instead of a download begun here.
        source = tfds.data_source(spec, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared as ArrayRecord: fall back to tfds.load (TensorFlow)
        from ma2ml_jax.prepare import how_to_prepare

        builder = tfds.builder(spec, data_dir=data_dir)
        root = str(builder.data_dir_root)
        manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
        if not builder.is_prepared():
            raise DataError(f"tfds:{spec} is not prepared in {root}; "
                            f"{how_to_prepare(spec, root, manual)}; then run with "
                            f"--config.data.data_dir={shlex.quote(root)}") from e
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise DataError(
                f"tfds:{spec} split {split!r} cannot be read with tfds.data_source "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); install "
                f"tensorflow for tfds.load, or, as ArrayRecord in a NEW_DIR, "
                f"{how_to_prepare(spec, 'NEW_DIR', manual)}") from e
        arrays = tfds.as_numpy(tfds.load(spec, split=split, data_dir=data_dir, batch_size=-1,
                                         download=False))
        return _image_label(arrays, spec)
    images, labels = [], []
    chunk = 4096
    for start in range(0, len(source), chunk):
        idx = list(range(start, min(len(source), start + chunk)))
        try:  # batched random access is much faster on large datasets
            examples = source.__getitems__(idx)
        except (AttributeError, TypeError):  # sources (and TFDS's mock) without it
            examples = [source[i] for i in idx]
        for ex in examples:
            image, label = _image_label(ex, spec)
            images.append(image)
            labels.append(int(label))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"tfds:{spec} split {split!r} has images of several shapes "
                        f"({sorted(shapes)[:3]}...); resize them to one shape first")
    return np.stack(images), np.asarray(labels)


# ------------------------------------------------------------------------------------ checks
def _as_nhwc(x, key, source) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{source}: {key} has shape {x.shape}; expected images [N, H, W] or "
                        f"[N, H, W, C] with C in (1, 3)")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.integer) and x.min(initial=0) >= 0 and x.max(initial=0) <= 255:
            x = x.astype(np.uint8)
        else:
            raise DataError(f"{source}: {key} has dtype {x.dtype}; expected uint8 pixels in "
                            f"0..255")
    return x


def _as_labels(y, key, source) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: {key} has shape {y.shape} and dtype {y.dtype}; expected "
                        f"integer class labels [N]")
    return y.astype(np.int32)
