import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ma2ml_jax import data, prepare
from ma2ml_jax.errors import DataError

# The layout of the archives at TFDS's CIFAR URLs, a few records per batch file.
LAYOUTS = {
    "cifar10": dict(prefix="cifar-10-batches-bin/", labels=(10,), batch_files=6,
                    train=[f"data_batch_{i}.bin" for i in range(1, 6)], test=["test_batch.bin"],
                    names=["batches.meta.txt"]),
    "cifar100": dict(prefix="cifar-100-binary/", labels=(20, 100), batch_files=2,
                     train=["train.bin"], test=["test.bin"],
                     names=["coarse_label_names.txt", "fine_label_names.txt"]),
}


def _cifar_archive(path, name, per_file=7, seed=0):
    """Writes a small archive in CIFAR's binary format; returns {split: (images, labels)}.

    A record is one byte per label (CIFAR-100: coarse, then fine) and a channel-major 3x32x32
    image; the images returned are HWC, as TFDS serves them.
    """
    layout, rng = LAYOUTS[name], np.random.default_rng(seed)
    files, arrays = {}, {}
    for split in ("train", "test"):
        images, labels = [], []
        for file in layout[split]:
            n = per_file * (len(layout["train"]) if split == "test" else 1)
            # Labels 0..4 in every file: each label of test occurs in train, as data.load checks.
            label_bytes = np.stack([rng.integers(0, k, n) for k in layout["labels"]], 1)
            label_bytes[:, -1] = np.arange(n) % 5
            chw = rng.integers(0, 256, (n, 3, 32, 32))
            files[file] = np.concatenate([label_bytes, chw.reshape(n, -1)], 1).astype(
                np.uint8).tobytes()
            images.append(chw.transpose(0, 2, 3, 1).astype(np.uint8))
            labels.append(label_bytes[:, -1])  # the fine label is the one data.load reads
        arrays[split] = np.concatenate(images), np.concatenate(labels)
    for file, k in zip(layout["names"], layout["labels"]):
        files[file] = "".join(f"{file[:5]}{i}\n" for i in range(k)).encode() + b"\n"
    with tarfile.open(path, "w:gz") as tar:
        for file, content in files.items():
            info = tarfile.TarInfo(layout["prefix"] + file)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return arrays


def _by_pixels(images, labels):
    order = sorted(range(len(labels)), key=lambda i: images[i].tobytes())
    return images[order], labels[order]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_prepared_dataset_reads_back_the_archive(tmp_path, name):
    archive = tmp_path / f"{name}.tar.gz"
    arrays = _cifar_archive(archive, name)
    data_dir = str(tmp_path / "tfds")
    path = prepare.prepare(name, data_dir, str(archive))
    assert path == os.path.join(data_dir, name, "3.0.2")

    # data.load reads it through TFDS's registered builder and tfds.data_source; train and
    # validation together are the archive's train split, image for image and label for label.
    d = data.load(f"tfds:{name}", val_size=5, data_dir=data_dir)
    x, y = _by_pixels(np.concatenate([d.x_train, d.x_val]), np.concatenate([d.y_train, d.y_val]))
    want_x, want_y = _by_pixels(*arrays["train"])
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(_by_pixels(d.x_test, d.y_test)[0],
                                  _by_pixels(*arrays["test"])[0])

    builder = tfds.builder(name, data_dir=data_dir)
    assert builder.info.file_format.value == "array_record"
    assert builder.info.features["label"].names[:2] == [f"{LAYOUTS[name]['names'][-1][:5]}{i}"
                                                        for i in range(2)]
    ids = {ex["id"] for ex in tfds.data_source(name, split="test", data_dir=data_dir)}
    assert ids == {f"test_{i:05d}".encode() for i in range(len(arrays["test"][1]))}


def test_prepare_twice_keeps_the_dataset(tmp_path):
    archive = tmp_path / "c.tar.gz"
    _cifar_archive(archive, "cifar10", per_file=2)
    path = prepare.prepare("cifar10", str(tmp_path), str(archive))
    before = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
    os.remove(archive)  # a second run neither reads the archive nor rewrites the files
    prepare.prepare("cifar10", str(tmp_path))
    assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == before


def test_downloads_are_checked_against_tfds_checksums():
    for name in prepare.PREPARABLE:
        (url, info), = prepare.make_builder(name).url_infos.items()
        assert url.endswith(f"{name.replace('cifar', 'cifar-')}-binary.tar.gz")
        assert len(info.checksum) == 64  # sha256


def test_command_line(tmp_path, capsys):
    archive = tmp_path / "c.tar.gz"
    _cifar_archive(archive, "cifar10", per_file=2)
    data_dir = tmp_path / "my data"
    assert prepare.main(["tfds:cifar10", f"--data_dir={data_dir}", f"--archive={archive}"]) == 0
    assert f"--config.data.data_dir='{data_dir}'" in capsys.readouterr().out

    assert prepare.main(["cifar10", f"--archive={tmp_path / 'missing.tar.gz'}"]) == 2
    assert "archive not found" in capsys.readouterr().err


def test_other_datasets_get_the_tensorflow_commands():
    with pytest.raises(DataError) as e:
        prepare.make_builder("mnist", "/data")
    assert ("`pip install tensorflow tensorflow-datasets`, then `tfds build mnist "
            "--file_format=array_record --data_dir=/data`") in str(e.value)
