"""Throughput and host memory of the streaming input pipeline (`stream.py`) on generated data.

    python -m ma2ml_jax.bench.input [--images 500,2000] [--size_range 64,512] [--image_size 224]
        [--batch_size 64] [--workers 0] [--prefetch 2] [--epochs 1] [--data_dir DIR] [--quick]

For each number of training images, writes (once, in DIR, default a temporary directory) a TFDS
dataset in ArrayRecord format of JPEGs of random sizes (sides uniform in --size_range, a
smooth random picture plus noise, quality 90: `write_synthetic_jpegs`, also the tests' data),
then in a fresh process (Linux: it reads and resets its peak resident memory in /proc): times the
label index (records parsed, images not decoded), opens the stream (`stream.load`: the label
index again, a sample decoded for the normalization statistics; 10% held out for validation),
streams --epochs training epochs (random-resized crops) and the validation split (centre crops)
as host arrays, and reports images/s of each and the resident memory before loading and its peaks
while loading and while streaming, against the size the decoded split would take in memory.
`--quick` streams 64 small JPEGs at 32 pixels, batches of 16: the same code path at its smallest,
what the tests run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

NUM_CLASSES = 10


def write_synthetic_jpegs(data_dir: str, *, train: int, test: int = 0,
                          size_range: tuple[int, int] = (64, 512), num_classes: int = NUM_CLASSES,
                          seed: int = 0, name: str = "synthetic_jpegs", channels: int = 3,
                          fixed_size: int = 0) -> str:
    """Writes a TFDS dataset `name` (ArrayRecord, no TensorFlow needed) into `data_dir`.

    Images are JPEGs of random height and width in `size_range` (or `fixed_size` squared): an
    8x8 random picture whose colour leans towards its class, upsampled, plus noise. The builder is
    not registered: it is read back by name from `data_dir`, as any prepared dataset.

    Returns:
      The source string, "tfds:NAME".
    """
    import tensorflow_datasets as tfds
    from PIL import Image

    lo, hi = size_range
    mode = "RGB" if channels == 3 else "L"

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        # No checksums or metadata files beside this code: skips TFDS's look-up, which imports
        # importlib_resources (not among TFDS's requirements on Python >= 3.9).
        code_path = None

        def _info(self):
            shape = (fixed_size or None, fixed_size or None, channels)
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=shape, encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=num_classes)}))

        def _split_generators(self, dl_manager):
            del dl_manager
            splits = {"train": self._generate_examples(train, seed)}
            if test:
                splits["test"] = self._generate_examples(test, seed + 1)
            return splits

        def _generate_examples(self, n, split_seed):
            rng = np.random.default_rng(split_seed)
            tint = np.random.default_rng(seed).uniform(-60, 60, (num_classes, channels))
            for i in range(n):
                label = int(rng.integers(num_classes))
                h, w = ((fixed_size, fixed_size) if fixed_size
                        else rng.integers(lo, hi + 1, 2))
                small = np.clip(rng.uniform(0, 255, (8, 8, channels)) + tint[label], 0, 255)
                big = np.asarray(Image.fromarray(small.astype(np.uint8).squeeze(-1)
                                                 if channels == 1 else small.astype(np.uint8),
                                                 mode).resize((int(w), int(h)),
                                                              Image.Resampling.BICUBIC))
                noisy = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(noisy, mode).save(buf, format="JPEG", quality=90)
                yield i, {"image": buf.getvalue(), "label": label}

    Builder.name = name
    builder = Builder(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return f"tfds:{name}"


def _rss_mib() -> tuple[float, float]:
    """(resident, peak resident since the last `_reset_peak`) memory of this process, MiB."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to VmRSS
        f.write("5")


def measure(source: str, data_dir: str, image_size: int, batch_size: int, workers: int,
            prefetch: int, epochs: int = 1) -> dict:
    """One size's figures (run in a fresh process: the peak memory is its own)."""
    import jax  # noqa: F401 - imported before the baseline, as in a search

    from ma2ml_jax import stream

    spec = source[len("tfds:"):]
    records = stream.open_split(spec, "train", data_dir)
    stream.read(records, [0])  # the readers' one-time set-up, outside the timing
    t0 = time.perf_counter()
    stream.label_index(records)  # no cache given: read from the records
    label_s = time.perf_counter() - t0
    n = len(records)
    _reset_peak()
    base = _rss_mib()[0]
    dataset = stream.load(source, val_size=max(1, n // 10), seed=0, data_dir=data_dir,
                          image_size=image_size, workers=workers, prefetch=prefetch)
    load_peak = _rss_mib()[1]
    spe = dataset.steps_per_epoch(batch_size)
    plan = [(e, step, np.ones(1, bool)) for e in range(epochs) for step in range(spe)]
    _reset_peak()
    t0 = time.perf_counter()
    with dataset.train_batches(plan, batch_size, [0], place=lambda t: t) as batches:
        seen = sum(len(x) for x, _, _ in batches)
    train_s = time.perf_counter() - t0
    train_peak = _rss_mib()[1]
    t0 = time.perf_counter()
    with dataset.eval_batches(batch_size, place=lambda t: t) as batches:
        val = sum(int(v.sum()) for _, _, v in batches)
    val_s = time.perf_counter() - t0
    return {"images": n, "label_index_per_s": n / label_s, "train_images": seen,
            "train_per_s": seen / train_s, "val_images": val, "val_per_s": val / val_s,
            "base_mib": base, "load_peak_mib": load_peak,
            "stream_peak_mib": max(train_peak, _rss_mib()[1]),
            "decoded_split_mib": n * image_size ** 2 * 3 / 2 ** 20,
            "jpeg_mib": sum(os.path.getsize(os.path.join(root, f))
                            for root, _, files in os.walk(data_dir) for f in files
                            if ".array_record" in f and "-train." in f) / 2 ** 20}


# --quick
QUICK = {"images": "64", "size_range": "16,48", "image_size": 32, "batch_size": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="500,2000", help="training images, comma-separated")
    parser.add_argument("--size_range", default="64,512", help="min,max side of the JPEGs")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: one a core)")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs streamed")
    parser.add_argument("--data_dir", default="", help="where the datasets are (re)used")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--quick", action="store_true",
                        help="the smallest run: " + ", ".join(f"--{k} {v}" for k, v in
                                                              QUICK.items()))
    args = parser.parse_args()
    if args.quick and not args.measure:
        vars(args).update(QUICK)
    if args.measure:
        source, data_dir = args.measure.split("@", 1)
        print(json.dumps(measure(source, data_dir, args.image_size, args.batch_size,
                                 args.workers, args.prefetch, args.epochs)))
        return
    lo, hi = (int(v) for v in args.size_range.split(","))
    root = args.data_dir or tempfile.mkdtemp(prefix="ma2ml_bench_input_")
    rows = []
    for n in (int(v) for v in args.images.split(",")):
        data_dir = os.path.join(root, f"n{n}_s{lo}-{hi}")
        name = "synthetic_jpegs"
        print(f"{n} images: writing them (once) and streaming in a fresh process ...",
              flush=True)
        if not os.path.isdir(os.path.join(data_dir, name)):
            # In a child too, so that the measuring process never held the encoder's memory.
            subprocess.run([sys.executable, "-c", (
                "from ma2ml_jax.bench.input import write_synthetic_jpegs; "
                f"write_synthetic_jpegs({data_dir!r}, train={n}, size_range=({lo}, {hi}))")],
                check=True, capture_output=True)
        out = subprocess.run([sys.executable, "-m", "ma2ml_jax.bench.input",
                              f"--measure=tfds:{name}@{data_dir}",
                              f"--image_size={args.image_size}",
                              f"--batch_size={args.batch_size}", f"--workers={args.workers}",
                              f"--prefetch={args.prefetch}", f"--epochs={args.epochs}"],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{n} images: label index {r['label_index_per_s']:.0f} records/s, train "
              f"{r['train_per_s']:.0f} images/s, val {r['val_per_s']:.0f} images/s, RSS "
              f"{r['base_mib']:.0f} MiB before loading, peak {r['load_peak_mib']:.0f} MiB "
              f"loading, {r['stream_peak_mib']:.0f} MiB streaming", flush=True)
    print(f"\n| training images (JPEG MiB) | label index | train (random crops) | "
          f"validation (centre crops) | RSS before | peak RSS loading | peak RSS streaming | "
          f"decoded split at {args.image_size}px |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} ({r['jpeg_mib']:.0f}) | {r['label_index_per_s']:.0f} rec/s | "
              f"{r['train_per_s']:.0f} img/s | {r['val_per_s']:.0f} img/s | "
              f"{r['base_mib']:.0f} MiB | {r['load_peak_mib']:.0f} MiB | "
              f"{r['stream_peak_mib']:.0f} MiB | {r['decoded_split_mib']:.0f} MiB |")

if __name__ == "__main__":
    main()
