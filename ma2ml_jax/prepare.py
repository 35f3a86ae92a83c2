r"""Prepare CIFAR-10 or CIFAR-100 as an ArrayRecord TFDS dataset, without TensorFlow.

  python -m ma2ml_jax.prepare cifar10 --data_dir=~/tensorflow_datasets
  python -m ma2ml_jax.prepare cifar100 --data_dir=DIR --archive=cifar-100-binary.tar.gz  # offline

then run with `--config.data.data_dir=DIR` (the default, like TFDS's, is ~/tensorflow_datasets).

TFDS's own `tfds build cifar10 --file_format=array_record` needs TensorFlow: its CIFAR builder
reads the batches with `tf.io.gfile`, encodes every image with `tf.image.encode_png`, and its
archive extractor writes through `tf.io.gfile`. The builders here are TFDS's CIFAR builders (name,
version, features, splits, example ids and label names unchanged) with those three steps done by
`tarfile`, numpy and PIL. They write the directory `tfds build` uses, `DIR/cifar10/3.0.2`, which
TFDS's registered builder, `tfds.data_source` and `data.load("tfds:cifar10", data_dir=DIR)` read;
the images read back are the archive's pixels (tests/test_prepare.py). The archive is downloaded
by TFDS's download manager and checked against the checksum TFDS registered for it; `--archive`
takes one downloaded before (not checked).

Other datasets (imagenet2012, ...) need TFDS's builders and so TensorFlow: `how_to_prepare` gives
the commands.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import tarfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import cifar

from ma2ml_jax.errors import EXIT_USER_ERROR, DataError, UserError

PREPARABLE = ("cifar10", "cifar100")
_IMAGE_BYTES = 32 * 32 * 3


def how_to_prepare(spec: str, data_dir: str, manual_download: bool = False) -> str:
    """The commands that prepare the TFDS dataset `spec` in `data_dir`, as one line.

    Args:
      spec: NAME[/CONFIG], as in a `tfds:` data source.
      data_dir: the TFDS data directory to prepare it in.
      manual_download: whether TFDS's builder reads files the user downloads (imagenet2012).
    """
    data_dir = shlex.quote(str(data_dir))
    build = f"tfds build {spec} --file_format=array_record --data_dir={data_dir}"
    if manual_download:
        build += " --manual_dir=DIR_OF_ITS_DOWNLOADED_FILES"
    if spec in PREPARABLE:
        return (f"prepare it with `python -m ma2ml_jax.prepare {spec} --data_dir={data_dir}` "
                f"(no TensorFlow needed), or where TensorFlow is installed with `{build}`")
    return ("prepare it where TensorFlow is installed: `pip install tensorflow "
            f"tensorflow-datasets`, then `{build}`")


class _WithoutTensorFlow:
    """Replaces the steps of TFDS's CIFAR builders that call TensorFlow."""

    def __init__(self, *, archive: str | None = None, **kwargs):
        self._archive = archive
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        info = self._cifar_info
        archive = self._archive
        if archive is None:
            try:
                archive = dl_manager.download(info.url)
            except Exception as e:  # offline, or a checksum that does not match TFDS's
                raise DataError(f"cannot download {info.url} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); download it "
                                "where you can and pass --archive=PATH") from e
        # Both archives' batches fit in memory (about 180 MB); reading them out of the tarball
        # leaves nothing extracted beside the download.
        with tarfile.open(os.fspath(archive)) as tar:
            files = {os.path.normpath(m.name): tar.extractfile(m).read()
                     for m in tar if m.isfile()}

        def read(name):
            path = os.path.normpath(info.prefix + name)
            if path not in files:
                raise DataError(f"{archive} has no {path}; expected the archive {info.url}")
            return files[path]

        for key, names_file in zip(info.label_keys, info.label_files):
            names = [n for n in read(names_file).decode().split("\n") if n]
            self.info.features[key].names = names
        return {"train": self._generate_examples("train_", [read(f) for f in info.train_files]),
                "test": self._generate_examples("test_", [read(f) for f in info.test_files])}

    def _generate_examples(self, split_prefix, batches):
        """Yields TFDS's CIFAR examples, keyed and named as its builder does.

        Args:
          split_prefix: "train_" or "test_", the prefix of the example ids.
          batches: the archive's binary batches: records of one label byte per label key
            (CIFAR-100: coarse, then fine) followed by a 3x32x32 (channel-major) image.
        """
        label_keys = self._cifar_info.label_keys
        n_labels = len(label_keys)
        index = 0  # TFDS keys by the running index: the same shuffle and shards as its builder
        for batch in batches:
            records = np.frombuffer(batch, np.uint8).reshape(-1, n_labels + _IMAGE_BYTES)
            for record in records:
                png = io.BytesIO()
                image = record[n_labels:].reshape(3, 32, 32).transpose(1, 2, 0)
                Image.fromarray(image).save(png, format="png")
                example = {k: int(v) for k, v in zip(label_keys, record[:n_labels])}
                example.update(id=f"{split_prefix}{index:05d}", image=png.getvalue())
                yield index, example
                index += 1


def _default_data_dir():
    return tfds.core.constants.get_default_data_dir()  # $TFDS_DATA_DIR or ~/tensorflow_datasets


def _registered_checksums(name):
    # TFDS looks for a builder's checksums beside its module; this one's are TFDS's.
    return tfds.core.utils.tfds_path() / "url_checksums" / f"{name}.txt"


class _Cifar10(_WithoutTensorFlow, cifar.Cifar10, skip_registration=True):
    name = "cifar10"
    _checksums_path = _registered_checksums(name)


class _Cifar100(_WithoutTensorFlow, cifar.Cifar100, skip_registration=True):
    name = "cifar100"
    _checksums_path = _registered_checksums(name)


_BUILDERS = {"cifar10": _Cifar10, "cifar100": _Cifar100}


def make_builder(name: str, data_dir: str | None = None, archive: str | None = None):
    """The TFDS builder that prepares `name` as ArrayRecord without TensorFlow.

    Args:
      name: ``cifar10`` or ``cifar100``.
      data_dir: TFDS data directory (None: TFDS's default).
      archive: the dataset's binary archive, downloaded before (None: download it).

    Raises:
      DataError: a dataset other than CIFAR-10/100, or a missing archive.
    """
    if name not in _BUILDERS:
        raise DataError(f"python -m ma2ml_jax.prepare knows {', '.join(PREPARABLE)}, not "
                        f"{name!r}; {how_to_prepare(name, data_dir or _default_data_dir())}")
    if archive is not None and not os.path.isfile(archive):
        raise DataError(f"archive not found: {archive}")
    return _BUILDERS[name](data_dir=data_dir, file_format="array_record", archive=archive)


def prepare(name: str, data_dir: str | None = None, archive: str | None = None) -> str:
    """Downloads (unless `archive` is given) and prepares `name`; returns the prepared directory.

    A dataset already prepared there is left as it is.
    """
    builder = make_builder(name, data_dir, archive)
    # TFDS would first look for a prepared copy on its GCS bucket: TFRecord files, which
    # tfds.data_source cannot read and which need TensorFlow to fetch.
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    return builder.data_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ma2ml_jax.prepare",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"{' or '.join(PREPARABLE)} (tfds:NAME is accepted too)")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data directory, the one --config.data.data_dir will name "
                             "(default: TFDS's, ~/tensorflow_datasets or $TFDS_DATA_DIR)")
    parser.add_argument("--archive", default=None,
                        help="the binary archive downloaded before (cifar-10-binary.tar.gz, "
                             "cifar-100-binary.tar.gz); default: download it")
    parser.add_argument("--traceback", action="store_true", help="full traceback on bad input")
    args = parser.parse_args(argv)
    name = args.name.removeprefix("tfds:")
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    try:
        path = prepare(name, data_dir, args.archive)
    except UserError as e:
        if args.traceback or os.environ.get("MA2ML_TRACEBACK") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    root = os.path.dirname(os.path.dirname(path))
    print(f"prepared {name} in {path}; use it with --config.data.data_dir={shlex.quote(root)}")
    return 0


if __name__ == "__main__":
    # The builders of the importable module, not of __main__: the dataset's info records the
    # module of the code that wrote it.
    from ma2ml_jax import prepare as _module

    sys.exit(_module.main())
