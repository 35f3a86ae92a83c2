"""Streaming input (`stream.py`) on generated TFDS datasets in ArrayRecord format whose JPEGs
differ in size, written without TensorFlow by `bench.input.write_synthetic_jpegs` (a
`GeneratorBasedBuilder` that yields encoded JPEG bytes, built with file_format='array_record'
and read back by name from its data_dir like any prepared dataset)."""

import dataclasses
import io
import json
import sys
import textwrap
import tracemalloc

import jax
import numpy as np
import pytest
from PIL import Image

from ma2ml_jax import config as config_lib
from ma2ml_jax import evaluate, search, stream
from ma2ml_jax.bench.input import write_synthetic_jpegs
from ma2ml_jax.errors import ConfigError, DataError
from ma2ml_jax.spaces import make_pipeline_space

NAME = "synthetic_jpegs"
SOURCE = f"tfds:{NAME}"
SIZES = (16, 120)  # sides of the generated JPEGs


def _write(root, train, **kwargs):
    data_dir = str(root)
    assert write_synthetic_jpegs(data_dir, train=train, size_range=SIZES, **kwargs) == SOURCE
    return data_dir


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """160 training images of 10 classes, sides 16..120."""
    return _write(tmp_path_factory.mktemp("small"), 160, test=8)


class Counting:
    """A record source that remembers which records were read."""

    def __init__(self, source):
        self.source, self.read = source, []

    def __len__(self):
        return len(self.source)

    def __getitems__(self, indices):
        self.read.extend(int(i) for i in indices)
        return self.source.__getitems__(indices)


def _true_labels(data_dir):
    import tensorflow_datasets as tfds

    ds = tfds.data_source(NAME, split="train", data_dir=data_dir, download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
    return np.array([int(ds[i]["label"]) for i in range(len(ds))])


def _load(data_dir, **kwargs):
    args = {"val_size": 12, "seed": 0, "classes": 4, "data_dir": data_dir, "image_size": 24,
            "workers": 2, **kwargs}
    return stream.load(SOURCE, **args)


def _epoch_plan(dataset, batch_size, steps_per_call=1, epochs=1):
    spe = dataset.steps_per_epoch(batch_size)
    return [(e, s, np.arange(s, s + steps_per_call) < spe)
            for e in range(epochs) for s in range(0, spe, steps_per_call)]


# ------------------------------------------------------------------------------------ decoding
def test_tfds_decodes_variable_size_jpegs_with_pil_and_no_tensorflow(small):
    """What tfds.data_source returns without TensorFlow: the image feature decoded by PIL to
    uint8 arrays of each image's own size; with SkipDecoding the JPEG bytes the stream decodes."""
    import tensorflow_datasets as tfds

    decoded = tfds.data_source(NAME, split="train", data_dir=small, download=False)
    raw = stream.open_split(NAME, "train", small)
    assert "tensorflow" not in sys.modules
    shapes = set()
    for i in range(8):
        image = decoded[i]["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        shapes.add(image.shape)
        record = raw.__getitems__([i])[0]
        assert isinstance(record["image"], bytes) and record["label"] == decoded[i]["label"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["image"]))), image)
    assert len(shapes) > 1


def _jpeg(width, height, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8).squeeze()
    mode = "RGB" if channels == 3 else "L"
    image = Image.fromarray(small, mode).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("width, height", [(17, 300), (300, 17), (64, 64), (8, 9)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("train", [False, True])
def test_decode_gives_the_configured_size_from_any_size(width, height, channels, train):
    rng = np.random.default_rng(0) if train else None
    x = stream.decode(_jpeg(width, height, channels), 24, channels, rng)
    assert x.shape == (24, 24, channels) and x.dtype == np.uint8


@pytest.mark.parametrize("width, height", [(640, 480), (90, 200)])
def test_center_crop_matches_pil_without_reduced_decoding(width, height):
    """Against PIL decoding the whole image and cropping the central 87.5% (the reference): the
    stream decodes large JPEGs at a reduced DCT scale, so it matches to within JPEG noise."""
    data = _jpeg(width, height)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    side = 0.875 * min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    want = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=box), np.float32)
    got = stream.decode(data, 32, 3).astype(np.float32)
    assert np.abs(got - want).mean() < 2.0


@pytest.mark.parametrize("width, height", [(500, 375), (50, 400), (1000, 20)])
def test_random_crop_boxes_lie_inside_with_the_area_and_ratio_ranges(width, height):
    """8-100% of the area at a ratio in 3/4..4/3; an image too elongated for that (1000x20)
    falls back to its largest central crop of ratio 4/3."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = stream.random_crop_box(rng, width, height)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        assert 0.7 < w / h < 1.4
        if width / height <= 4 / 3:
            assert w * h >= 0.07 * width * height
    assert stream.random_crop_box(rng, 1000, 20) == (486, 0, 513, 20)


def test_training_crops_are_seeded_and_vary():
    data = _jpeg(300, 200)
    a = stream.decode(data, 16, 3, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, stream.decode(data, 16, 3, np.random.default_rng([1, 2])))
    assert not np.array_equal(a, stream.decode(data, 16, 3, np.random.default_rng([1, 3])))


# ------------------------------------------------------------------------------------ config
def test_auto_streams_only_tfds_sources_whose_images_differ_in_size(small, tmp_path):
    fixed = _write(tmp_path, 20, fixed_size=12)
    assert stream.wanted(SOURCE, "auto", small)
    assert not stream.wanted(SOURCE, "auto", fixed)
    assert stream.wanted(SOURCE, "true", fixed)
    assert not stream.wanted(SOURCE, "false", small)
    assert not stream.wanted("digits", "auto")
    with pytest.raises(DataError, match="needs a tfds: source"):
        stream.wanted("digits", "true")


@pytest.mark.parametrize("key, value, message", [
    ("stream", "maybe", "data.stream='maybe' is not one of"),
    ("image_size", 0, "data.image_size=0 must be >= 1"),
    ("prefetch", 0, "data.prefetch=0 must be >= 1"),
    ("workers", -1, "data.workers=-1 must be >= 0"),
])
def test_bad_stream_settings_are_named(key, value, message):
    c = config_lib.base_config()
    c.data[key] = value
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError, match="is not prepared in .* --file_format=array_record"):
        stream.load("tfds:mnist", val_size=10, data_dir=str(tmp_path))
    with pytest.raises(DataError, match="prepare it as ArrayRecord"):
        stream.open_split("mnist", "train", str(tmp_path))


# ------------------------------------------------------------------------------------ batches
def test_batches_have_the_configured_resolution(small):
    d = _load(small)
    assert d.image_shape == (24, 24, 3) and d.num_classes == 4
    assert d.val_size == 12 and d.train_size == len(d.train_labels)
    assert d.mean.shape == d.std.shape == (3,) and np.all(d.std > 1)
    plan = _epoch_plan(d, 8, steps_per_call=2, epochs=2)
    seen = 0
    with d.train_batches(plan, 8, [7], place=lambda t: t) as batches:
        for (_, _, valid), (x, y, rows) in zip(plan, batches, strict=True):
            assert x.shape == (16, 24, 24, 3) and x.dtype == np.uint8 and rows.shape == (2, 8)
            assert set(np.unique(y)) <= set(range(4))
            seen += int(valid.sum())
    assert seen == 2 * d.steps_per_epoch(8)
    with d.eval_batches(5, place=lambda t: t) as batches:
        got = [(x.shape, int(v.sum())) for x, _, v in batches]
    assert {s for s, _ in got} == {(5, 24, 24, 3)} and sum(n for _, n in got) == 12


def test_the_same_selection_as_in_memory_loading(tmp_path):
    """On fixed-size images `data.load` can hold, the stream keeps the same class subset, the
    same validation split and the same max_train cap for the same seed."""
    from ma2ml_jax import data

    fixed = _write(tmp_path, 120, test=10, fixed_size=12)
    for kwargs in ({"classes": 4}, {"classes": 0, "max_train": 30}):
        mem = data.load(SOURCE, val_size=12, seed=3, data_dir=fixed, **kwargs)
        s = _load(fixed, seed=3, **kwargs)
        assert s.num_classes == mem.num_classes
        np.testing.assert_array_equal(s.train_labels, mem.y_train)
        np.testing.assert_array_equal(np.sort(s.val_labels), np.sort(mem.y_val))


def test_only_the_chosen_classes_are_read(small, tmp_path, monkeypatch):
    """The label index parses every record once and decodes no image; afterwards (cached beside
    the dataset) only the chosen classes' records are read."""
    opened, decoded = [], []
    real_open, real_decode = stream.open_split, stream.decode
    monkeypatch.setattr(stream, "open_split",
                        lambda *a: opened.append(Counting(real_open(*a))) or opened[-1])
    monkeypatch.setattr(stream, "decode", lambda *a: decoded.append(1) or real_decode(*a))
    labels = _true_labels(small)
    index = stream.label_index(stream.open_split(NAME, "train", small))
    np.testing.assert_array_equal(index, labels)
    assert sorted(opened[-1].read) == list(range(len(labels))) and not decoded

    _load(small)  # writes the cached index if an earlier test has not
    decoded.clear()
    d = _load(small)  # the normalization statistics decode a sample of the chosen images
    d = dataclasses.replace(d, source=opened[-1])
    with d.train_batches(_epoch_plan(d, 8), 8, [0], place=lambda t: t) as batches:
        for _ in batches:
            pass
    with d.eval_batches(8, place=lambda t: t) as batches:
        for _ in batches:
            pass
    kept = np.unique(labels[np.concatenate([d.train_records, d.val_records])])
    read = np.array(opened[-1].read)
    assert len(kept) == 4 and len(read) == len(decoded)  # each read once, to be decoded
    assert set(labels[read]) == set(kept)
    assert (~np.isin(labels, kept)).sum() > 0  # the other classes' records were never read


def _peak_streaming_bytes(data_dir):
    d = _load(data_dir, classes=0, val_size=10, image_size=32, prefetch=2)
    tracemalloc.start()
    try:
        with d.train_batches(_epoch_plan(d, 8), 8, [0], place=lambda t: t) as batches:
            assert batches._queue.maxsize == 2
            n = sum(len(x) for x, _, _ in batches)
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_host_memory_does_not_grow_with_the_dataset(tmp_path):
    """A full epoch of 50 and of 400 images peaks at the same host memory (numpy buffers, record
    bytes and Python objects, traced by tracemalloc): the prefetch queue, not the split."""
    small_peak, small_n = _peak_streaming_bytes(_write(tmp_path / "a", 60))
    large_peak, large_n = _peak_streaming_bytes(_write(tmp_path / "b", 410))
    assert (small_n, large_n) == (48, 400)
    decoded_split = large_n * 32 * 32 * 3
    assert large_peak < 1.5 * small_peak + 50_000
    assert large_peak < decoded_split / 2


def test_two_hosts_read_disjoint_shards(small, monkeypatch):
    """Hosts 0 and 1 of 2 (simulated): disjoint training and validation reads, each within its
    own contiguous range; a batch of 8 is 4 from each, and the gathered batch's rows put step j
    of both hosts together."""
    d = _load(small)
    hosts = [dataclasses.replace(d, source=Counting(d.source), process_index=p, process_count=2)
             for p in range(2)]
    spe = hosts[0].steps_per_epoch(8)
    assert spe == hosts[1].steps_per_epoch(8)
    plan = _epoch_plan(d, 8, steps_per_call=2)
    chunks = [list(h.local_train_chunks(plan, 8, [5])) for h in hosts]
    train_reads = [set(h.source.read) for h in hosts]
    assert all(x.shape[0] == 2 * 4 for host in chunks for x, _ in host)
    assert not train_reads[0] & train_reads[1]
    half = len(d.train_records) // 2
    assert train_reads[0] <= set(d.train_records[:half])
    assert train_reads[1] <= set(d.train_records[half:])
    assert sum(map(len, train_reads)) == 8 * spe
    for h in hosts:
        h.source.read.clear()
        assert sum(int(v.sum()) for _, _, v in h.local_eval_chunks(8)) == 6
    assert sorted(hosts[0].source.read + hosts[1].source.read) == list(d.val_records)

    # Host 0's consumer: the gather appends host 1's chunk (process order).
    others = iter(a for x, y in chunks[1] for a in (x, y))
    monkeypatch.setattr(stream, "allgather_ragged",
                        lambda a, lengths: np.concatenate([a, next(others)]))
    host0 = dataclasses.replace(hosts[0], source=d.source)
    with host0.train_batches(plan, 8, [5], place=lambda t: t) as batches:
        for (x, y, rows), (x0, y0), (x1, y1) in zip(batches, chunks[0], chunks[1], strict=True):
            assert x.shape == (16, 24, 24, 3) and rows.shape == (2, 8)
            for j in range(2):
                np.testing.assert_array_equal(
                    x[rows[j]], np.concatenate([x0[4 * j:4 * j + 4], x1[4 * j:4 * j + 4]]))
                np.testing.assert_array_equal(
                    y[rows[j]], np.concatenate([y0[4 * j:4 * j + 4], y1[4 * j:4 * j + 4]]))


def test_a_decoding_error_reaches_the_consumer_and_close_stops_the_thread(small, monkeypatch):
    d = _load(small)

    def broken(*args):
        raise OSError("truncated JPEG")

    monkeypatch.setattr(stream, "decode", broken)
    batches = d.train_batches(_epoch_plan(d, 8), 8, [0], place=lambda t: t)
    with pytest.raises(OSError, match="truncated JPEG"):
        next(batches)
    batches.close()
    assert not batches._thread.is_alive()
    monkeypatch.undo()
    batches = d.train_batches(_epoch_plan(d, 8, epochs=20), 8, [0], place=lambda t: t)
    next(batches)
    batches.close()  # long before the end
    assert not batches._thread.is_alive()


def test_two_processes_share_one_stream(tmp_path):
    """Two real processes (`_processes.two_processes`): the label index built collectively and
    cached, the same statistics as one process, the same gathered batches on both, disjoint
    reads, the whole validation split."""
    from _processes import two_processes

    data_dir = _write(tmp_path / "data", 90)
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(f"""
        import dataclasses, hashlib, json
        import numpy as np
        from ma2ml_jax import distributed, stream

        distributed.initialize("auto")
        d = stream.load("{SOURCE}", val_size=11, seed=0, classes=4, data_dir={data_dir!r},
                        image_size=16, workers=1)
        read, source = [], d.source
        d = dataclasses.replace(d, source=type("Counting", (), {{
            "__len__": lambda self: len(source),
            "__getitems__": lambda self, i: read.extend(map(int, i)) or source.__getitems__(i),
        }})())
        spe = d.steps_per_epoch(8)
        digest = hashlib.sha1()
        plan = [(0, s, np.ones(1, bool)) for s in range(spe)]
        with d.train_batches(plan, 8, [0], place=lambda t: t) as batches:
            for x, y, rows in batches:
                digest.update(x[rows[0]].tobytes() + y[rows[0]].tobytes())
        with d.eval_batches(4, place=lambda t: t) as batches:
            val = sum(int(v.sum()) for _, _, v in batches)
        print(json.dumps({{"digest": digest.hexdigest(), "read": read, "val": val,
                          "mean": d.mean.tolist(), "spe": spe}}))
    """))
    runs = two_processes([str(script)])
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    one = _load(data_dir, val_size=11, image_size=16)
    assert out[0]["digest"] == out[1]["digest"]
    assert out[0]["val"] == out[1]["val"] == 11
    np.testing.assert_allclose(out[0]["mean"], one.mean, rtol=1e-6)
    np.testing.assert_allclose(out[1]["mean"], one.mean, rtol=1e-6)
    assert not set(out[0]["read"]) & set(out[1]["read"])
    cached = np.load(tmp_path / "data" / NAME / "1.0.0" / "ma2ml_labels-train.npy")
    np.testing.assert_array_equal(cached, _true_labels(data_dir))


# ------------------------------------------------------------------------------------ search
def _tiny_config(data_dir):
    from configs import default

    c = default.get_config("local")
    c.data.source, c.data.data_dir = SOURCE, data_dir
    c.data.classes, c.data.val_size, c.data.image_size, c.data.workers = 4, 12, 16, 2
    c.search.algorithm = "random"
    c.search.iterations, c.search.pipelines = 2, 2
    c.evaluate.epochs, c.evaluate.batch_size = 1, 8
    c.evaluate.steps_per_call = 2  # 7 steps an epoch: the last chunk is padded
    # The pipelines sharded over the 4 fake devices: the producer thread places each batch
    # replicated on the mesh, as on accelerators ("loop", CPU's choice, places it on one device).
    c.evaluate.strategy = "unrolled"
    return c


def test_a_tiny_search_streams_end_to_end(small, tmp_path):
    c = _tiny_config(small)
    # CPU's own strategy: one pipeline's program (the sharded placement is the next test's).
    c.evaluate.strategy = "loop"
    assert "streamed" in search._load_data(c).summary()
    result = search.run(c, str(tmp_path / "run"), progress=False)
    assert len(result.trials) == 4
    for t in result.trials:
        assert t["failure"] is None and np.isfinite(t["loss"]) and 0 <= t["accuracy"] <= 1


@pytest.mark.slow  # the masked network sharded over 4 devices: minutes on 2 CPU cores; CI runs it
def test_a_second_streamed_evaluation_compiles_nothing(small):
    from _compiles import compilations

    c = _tiny_config(small)
    space = make_pipeline_space(c.spaces)
    dataset = search._load_data(c)
    assert dataset.steps_per_epoch(c.evaluate.batch_size) == 7
    ev = evaluate.make_evaluator(c, dataset, space)
    actions = space.sample(jax.random.key(0), 2)
    ev([space.decode(actions, 0)], jax.random.key(1))
    key = jax.random.key(2)
    with compilations() as programs:
        metrics = ev([space.decode(actions, 1)], key)
    assert programs == []
    assert metrics[0]["failure"] is None


def test_layerwise_spaces_do_not_stream(small):
    from ma2ml_jax.spaces import layerwise

    c = _tiny_config(small)
    space = make_pipeline_space(layerwise.layerwise_spaces_config("vgg_small"))
    with pytest.raises(DataError, match="layerwise"):
        evaluate.make_evaluator(c, search._load_data(c), space)
