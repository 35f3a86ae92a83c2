import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import report, search, tensorboard, workdir
from ma2ml_jax.errors import EXIT_USER_ERROR

ITERATIONS, PIPELINES = 3, 4
TORN = '{"iteration": 3, "index": 0, "pipel'  # what a kill in the middle of a write leaves


def _objective(pipelines):
    """Accuracy from two decisions, FLOPs from a width; the second pipeline of a batch fails."""
    out = []
    for i, p in enumerate(pipelines):
        width = p["nas"]["stages"][0]["width"]
        if i == 1:
            out.append({"reward": 0.0, "accuracy": 0.99, "flops": 1.0, "params": 10,
                        "failure": "nan loss"})
        else:
            acc = 0.5 * p["hpo"]["learning_rate"] + 0.01 * width
            out.append({"reward": acc, "accuracy": acc, "flops": width * 1e5 * (1 + i),
                        "params": 100 * width})
    return out


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Two tiny random searches (seeds 0 and 1); the second ends in a torn line."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1):
        c = config_lib.base_config()
        c.search.iterations, c.search.pipelines, c.seed = ITERATIONS, PIPELINES, seed
        c.search.algorithm = "random"
        w = str(root / f"seed{seed}")
        search.run(c, w, objective=_objective, progress=False)
        dirs.append(w)
    with open(os.path.join(dirs[1], "trials.jsonl"), "a") as f:
        f.write(TORN)
    return dirs


def _trials(workdir):
    """The trial log read independently: every complete line."""
    with open(os.path.join(workdir, "trials.jsonl")) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


# ------------------------------------------------------------------------------- statistics
def test_top_k_so_far_by_hand():
    iteration = np.array([0, 0, 1, 1, 2, 2])
    reward = np.array([1.0, 3.0, 2.0, 5.0, 0.0, np.nan])  # NaN: left out
    its, top2 = report.top_k_so_far(iteration, reward, 2)
    np.testing.assert_array_equal(its, [0, 1, 2])
    np.testing.assert_allclose(top2, [2.0, 4.0, 4.0])  # (3+1)/2, (5+3)/2, (5+3)/2
    np.testing.assert_allclose(report.top_k_so_far(iteration, reward, 1)[1], [3, 5, 5])
    # Fewer than k so far: the mean of all of them.
    np.testing.assert_allclose(report.top_k_so_far(iteration, reward, 3)[1], [2, 10 / 3, 10 / 3])
    with pytest.raises(ValueError, match="at least 1"):
        report.top_k_so_far(iteration, reward, 0)


def test_pareto_front_by_hand_and_against_brute_force():
    flops = np.array([3, 1, 2, 2, 4, 5, 4])
    acc = np.array([0.6, 0.5, 0.4, 0.6, 0.9, 0.8, 0.9])
    # (1, .5) -> (2, .6) -> (4, .9); (3, .6) is no better than (2, .6); of the equal (4, .9), the
    # first; (5, .8) and (2, .4) are dominated.
    np.testing.assert_array_equal(report.pareto_front(flops, acc), [1, 3, 4])

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        f, a = rng.integers(0, 6, n).astype(float), rng.integers(0, 6, n) / 5
        expected = [i for i in range(n) if not any(
            f[j] <= f[i] and a[j] >= a[i] and (f[j] < f[i] or a[j] > a[i] or j < i)
            for j in range(n) if j != i)]
        assert sorted(report.pareto_front(f, a)) == expected


def test_normalized_entropy_by_hand():
    tokens = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 0, 1]])
    # Four distinct of four samples: 1; one choice: 0; two halves of five choices, four samples:
    # log 2 / log 4.
    np.testing.assert_allclose(report.normalized_entropy(tokens, np.array([4, 1, 5])),
                               [1.0, 0.0, 0.5])
    np.testing.assert_allclose(report.normalized_entropy(tokens[:1], np.array([4, 1, 5])), 0.0)


# ------------------------------------------------------------------------------- the report
def test_report_of_two_searches(workdirs, tmp_path):
    out = str(tmp_path / "report")
    assert report.main([*workdirs, "--out", out, "--top_k", "3"]) == 0
    names = ["topk.png", "rewards.png", "pareto.png", "actions_0_seed0.png",
             "actions_1_seed1.png"]
    from matplotlib import image

    for name in names:
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 10_000, name
        pixels = image.imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels[..., :3].std() > 0.05, name  # not a blank canvas
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50, name

    with open(os.path.join(out, "summary.md")) as f:
        text = f.read()
    for name in names:
        assert f"({name})" in text  # linked
    for seed, w in enumerate(workdirs):
        trials = _trials(w)
        assert len(trials) == ITERATIONS * PIPELINES
        best = max(trials, key=lambda t: t["reward"])
        assert f"## random (seed {seed})" in text
        assert f"reward **{best['reward']:.4f}**" in text
        assert f"| random | {seed} | {ITERATIONS} | {len(trials)} | {ITERATIONS} | " \
               f"{best['reward']:.4f} |" in text
        # The best pipeline is there, decoded: its recipe's learning rate and optimizer.
        hpo = best["pipeline"]["hpo"]
        assert f"optimizer={hpo['optimizer']}, learning_rate={hpo['learning_rate']:g}" in text
    assert f"Failures: {ITERATIONS} x 'nan loss'" in text
    assert text.count("torn last line") == 1  # the second log's
    assert "### Most settled decisions" in text


def test_default_out_is_first_dir_report(workdirs):
    paths = report.write_report(workdirs[:1])
    assert os.path.dirname(paths["summary"]) == os.path.join(workdirs[0], "report")
    assert os.path.isfile(paths["topk"])


def test_curves_and_front_from_the_logs(workdirs):
    run = report.load_run(workdirs[1])
    trials = _trials(workdirs[1])
    assert run.torn and run.trials == trials and run.label == "random (seed 1)"
    assert run.space is not None
    c = report.columns(run)
    its, values = report.top_k_so_far(c.iteration, c.reward, 3)
    for it, v in zip(its, values):
        so_far = sorted((t["reward"] for t in trials if t["iteration"] <= it), reverse=True)
        assert v == pytest.approx(np.mean(so_far[:3]))
    # The failed pipelines (accuracy 0.99 at 1 FLOP) would dominate everything: not on the front.
    front = report.run_pareto_front(run)
    assert front.size and all(trials[i]["failure"] is None for i in front)
    ok = [t for t in trials if t["failure"] is None]
    assert trials[front[-1]]["accuracy"] == max(t["accuracy"] for t in ok)
    assert trials[front[0]]["flops"] == min(t["flops"] for t in ok)


def test_workdir_without_config_uses_dir_name_and_token_numbers(tmp_path):
    w = tmp_path / "handmade"
    w.mkdir()
    rows = []
    for it in range(4):
        for p in range(4):  # agent "a" settles on choice 2 of decision 0
            tokens = {"a": [2 if it >= 2 else p % 3, p % 2]}
            rows.append({"iteration": it, "index": p, "pipeline": {"a": tokens["a"]},
                         "tokens": tokens, "reward": it + p / 10, "accuracy": 0.5,
                         "flops": 0.0, "params": 0, "wall_time": 0.1, "failure": None})
    (w / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = report.write_report([str(w)], str(tmp_path / "out"), top_k=2)
    text = open(paths["summary"]).read()
    assert "## handmade" in text and "| ? | ? | 4 | 16 | 0 | 3.3000 | 3.2500 |" in text
    assert "| a | 0 | choice #2 | 100% | 0.00 |" in text  # columns of 2 iterations: 8 samples
    assert os.path.isfile(paths["actions_0"]) and os.path.isfile(paths["pareto"])


@pytest.mark.parametrize("case", ["missing_dir", "no_log", "empty_log", "only_torn",
                                  "corrupt_middle", "not_a_record", "top_k_0"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    w = tmp_path / "w"
    if case != "missing_dir":
        w.mkdir()
    good = json.dumps({"iteration": 0, "reward": 1.0}) + "\n"
    log = {"empty_log": "", "only_torn": TORN, "corrupt_middle": good + TORN + "\n" + good,
           "not_a_record": good + "[1, 2]\n", "top_k_0": good}.get(case)
    if log is not None:
        (w / "trials.jsonl").write_text(log)
    argv = [str(w)] + (["--top_k", "0"] if case == "top_k_0" else [])
    assert report.main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_command_line_error_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ma2ml_jax.report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr == f"error: no such workdir: {tmp_path / 'nope'}\n"


# ------------------------------------------------------------------------------- TensorBoard
def test_crc32c_standard_results():
    # RFC 3720 B.4 (as in TensorFlow's crc32c_test.cc) and the common check value.
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA
    assert tensorboard.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tensorboard.crc32c(bytes(range(32))) == 0x46DD794E
    assert tensorboard.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_scalar_writer_round_trip(tmp_path):
    logdir = str(tmp_path / "tb")
    with tensorboard.ScalarWriter(logdir) as writer:
        for step in range(3):
            writer.scalars({"reward/max": 0.5 + step, "reward/mean": -0.25 * step}, step)
        writer.scalar("failures/fraction", 0.1, 7)
    got = tensorboard.read_scalars(logdir)
    assert got["reward/max"] == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert got["reward/mean"] == [(0, 0.0), (1, -0.25), (2, -0.5)]
    assert got["failures/fraction"] == [(7, float(np.float32(0.1)))]
    assert os.path.basename(writer.path).startswith("events.out.tfevents.")

    # A record cut at the end (a killed writer) is left out; a flipped byte is an error.
    data = open(writer.path, "rb").read()
    cut = str(tmp_path / "cut.tfevents")
    open(cut, "wb").write(data[:-5])
    partial = tensorboard.read_scalars(cut)
    assert "failures/fraction" not in partial and partial["reward/max"] == got["reward/max"]
    bad = str(tmp_path / "bad.tfevents")
    open(bad, "wb").write(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    with pytest.raises(ValueError, match="CRC"):
        tensorboard.read_scalars(bad)


def test_event_file_parses_with_protobuf(tmp_path):
    """Google's protobuf parses the records as tensorflow.Event (event.proto, summary.proto)."""
    pb = pytest.importorskip("google.protobuf")
    del pb
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tensorflow",
                                               syntax="proto3")
    value = proto.message_type.add(name="SummaryValue")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".tensorflow.SummaryValue")
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".tensorflow.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Event"))

    writer = tensorboard.ScalarWriter(str(tmp_path))
    writer.scalars({"reward/best_so_far": 0.75, "loss": -2.0}, 12)
    writer.scalars({"reward/best_so_far": 0.875}, 2**40)
    writer.close()
    data = open(writer.path, "rb").read()
    events, pos = [], 0
    while pos < len(data):  # framing read here by hand: length, its CRC, data, its CRC
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        events.append(Event.FromString(data[pos + 12:pos + 12 + n]))
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    assert abs(events[0].wall_time - events[1].wall_time) < 60
    assert [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value] == [
        (12, "reward/best_so_far", 0.75), (12, "loss", -2.0), (2**40, "reward/best_so_far", 0.875)]


def test_iteration_scalars():
    trials = [{"reward": r, "accuracy": r, "failure": f} for r, f in
              [(0.1, None), (0.5, None), (0.0, "nan"), (0.3, None)]]
    s = workdir.iteration_scalars(trials[2:], trials, top_k=2)
    assert s == pytest.approx({"reward/mean": 0.15, "reward/max": 0.3, "reward/best_so_far": 0.5,
                 "reward/top2_so_far": 0.4, "accuracy/max": 0.3, "failures/fraction": 0.5})
    assert all(math.isfinite(v) for v in s.values())


def test_search_writes_tensorboard_scalars_each_iteration(workdirs):
    got = tensorboard.read_scalars(os.path.join(workdirs[0], "tensorboard"))
    trials = _trials(workdirs[0])
    assert [step for step, _ in got["reward/best_so_far"]] == list(range(ITERATIONS))
    best = max(t["reward"] for t in trials)
    assert got["reward/best_so_far"][-1][1] == pytest.approx(best, rel=1e-6)
    for it, value in got["reward/max"]:
        assert value == pytest.approx(max(t["reward"] for t in trials if t["iteration"] == it),
                                      rel=1e-6)
