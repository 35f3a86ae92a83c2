import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from configs import default
from ma2ml_jax import config as config_lib
from ma2ml_jax import data, retrain, search
from ma2ml_jax.spaces import make_pipeline_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search_config():
    """configs/default.py:local, shrunk: one iteration of 3 pipelines, 4 proxy steps each."""
    c = default.get_config("local")
    c.search.algorithm = "random"  # what is retrained matters here, not how it was found
    c.search.iterations = 1
    c.search.pipelines = 3
    c.evaluate.epochs = 1
    c.data.max_train = 128
    c.retrain.top_k = 2
    c.retrain.seeds = 2
    c.retrain.report_seeds = 2
    c.retrain.epochs = 1
    c.retrain.max_train = 256
    # One compiled program for both pipelines (the default "exact" compiles one per network).
    c.retrain.network = "masked"
    return c


def _scored_by_hand(config):
    """An objective in place of proxy training (which would compile a second program): a made-up
    accuracy per pipeline, with the FLOPs and params the evaluator would log for it."""
    from ma2ml_jax import cost

    def objective(pipelines):
        out = []
        for i, p in enumerate(pipelines):
            counted = cost.count("macro", p["nas"], 10, (8, 8, 1), config.model)
            acc = 0.5 + 0.1 * i
            out.append({"reward": acc, "accuracy": acc, "flops": counted.flops,
                        "params": counted.params})
        return out

    return objective


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A tiny search on digits (scored by `_scored_by_hand`), then its top-2 retrained for real
    (1 epoch, 2 selection seeds, then the selected pipeline on 2 report seeds)."""
    workdir = str(tmp_path_factory.mktemp("search"))
    config = _search_config()
    search.run(config, workdir, objective=_scored_by_hand(config), progress=False)
    # Budget 1.0: nothing fits; 1e12: everything does.
    result = retrain.run(workdir, flops_budgets=(1.0, 1e12), progress=False)
    with open(os.path.join(workdir, "trials.jsonl")) as f:
        trials = [json.loads(line) for line in f]
    return workdir, result, trials


def _counting(monkeypatch):
    """Counts the runs trained, by wrapping the real retrainer (no training is faked)."""
    calls = []
    real = retrain.make_retrainer

    def make(*args, **kwargs):
        fn = real(*args, **kwargs)

        def counted(pipeline, seed):
            calls.append(seed)
            return fn(pipeline, seed)

        return counted

    monkeypatch.setattr(retrain, "make_retrainer", make)
    return calls


SPLITS = ("validation", "test")
FRESH = [retrain.REPORT_SEED_BASE + i for i in range(5)]


def _identity(pipeline):
    return json.dumps(pipeline, sort_keys=True, default=str)


def _seed_noise(pipeline, seed, split):
    """A made-up accuracy that is pure noise of (pipeline, seed, split): no pipeline is better than
    another, so whatever sets one apart on a few runs is luck that a fresh run does not repeat."""
    h = zlib.crc32(_identity(pipeline).encode())
    return float(np.random.default_rng([h, seed, SPLITS.index(split)]).uniform(0.3, 0.7))


def _random_pipelines(n):
    """(config, tokens, decoded) of `n` distinct random pipelines of the tiny config."""
    import jax

    config = _search_config()
    config.retrain.max_train = 0  # whole splits, so the views can be told apart by their sizes
    space = make_pipeline_space(config.spaces)
    sampled = space.sample(jax.random.key(0), n)
    tokens = [{a: np.asarray(sampled[a][i]).tolist() for a in space.agents} for i in range(n)]
    assert len({retrain.pipeline_key(t) for t in tokens}) == n
    return config, tokens, [space.decode(t) for t in tokens]


def _hand_written_search(tmp_path, config, tokens, flops):
    """A search workdir written by hand (no proxy training): pipeline i has search rank i + 1."""
    workdir = tmp_path / "search"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    trials = [{"iteration": 0, "index": i, "tokens": t, "reward": 0.9 - 0.01 * i,
               "accuracy": 0.9 - 0.01 * i, "failure": None, "flops": float(f), "params": 1000}
              for i, (t, f) in enumerate(zip(tokens, flops))]
    (workdir / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    return str(workdir)


def _fake_training(monkeypatch, config, accuracy=_seed_noise):
    """Replaces every retraining run by `accuracy(pipeline, seed, split)`, the split being the
    one the run is measured on, told apart by comparing its images with an independent load of
    the data. Returns the runs as (split, pipeline identity, seed)."""
    d = data.load(config.data.source, val_size=config.data.val_size, seed=config.seed)
    calls = []

    def same(a, b):
        return a.shape == b.shape and np.array_equal(a, b)

    def make(cfg, dataset, space, log=print):
        if same(dataset.x_val, d.x_val):
            split = "validation"
            # Trained without the validation images, and with no test image within reach.
            assert len(dataset.y_train) == len(d.y_train) and len(dataset.x_test) == 0
        else:
            assert same(dataset.x_val, d.x_test)
            split = "test"
            assert len(dataset.y_train) == len(d.y_train) + len(d.y_val)

        def train(pipeline, seed):
            calls.append((split, _identity(pipeline), seed))
            return {"accuracy": accuracy(pipeline, seed, split), "failure": None,
                    "flops": 0.0, "params": 0}

        return train

    monkeypatch.setattr(retrain, "make_retrainer", make)
    return calls


def test_selection_on_validation_and_report_on_fresh_seeds(tmp_path, monkeypatch):
    config, tokens, pipelines = _random_pipelines(6)
    val = [np.mean([_seed_noise(p, s, "validation") for s in (0, 1)]) for p in pipelines]
    best = int(np.argmax(val))
    runner_up = int(np.argsort(val)[-2])
    # The luckiest pipeline on validation is the most expensive one, so that a budget just under
    # its FLOPs selects the runner-up: two pipelines to report.
    flops = [6e6 if i == best else 1e6 * (1 + i) for i in range(6)]
    workdir = _hand_written_search(tmp_path, config, tokens, flops)
    calls = _fake_training(monkeypatch, config)

    result = retrain.run(workdir, top_k=6, seeds=2, report_seeds=5, flops_budgets=(6e6, 1e12),
                         progress=False)

    selection = sorted((k, s) for split, k, s in calls if split == "validation")
    report = sorted((k, s) for split, k, s in calls if split == "test")
    assert selection == sorted((_identity(p), s) for p in pipelines for s in (0, 1))
    assert report == sorted((_identity(pipelines[i]), s) for i in (best, runner_up)
                            for s in FRESH)
    assert not {s for _, s in selection} & {s for _, s in report}
    assert result.trained == len(calls) == 12 + 10
    # Selected on validation accuracy; the reported test accuracy is that of the report seeds.
    assert result.best["rank"] == best + 1
    assert result.best["selection_seeds"] == [0, 1] and result.best["report_seeds"] == FRESH
    assert result.best["validation_accuracy_mean"] == pytest.approx(val[best])
    expected = [_seed_noise(pipelines[best], s, "test") for s in FRESH]
    assert result.best["test_accuracy"] == expected
    assert result.best["test_accuracy_mean"] == pytest.approx(np.mean(expected))
    assert result.best["test_accuracy_std"] == pytest.approx(np.std(expected, ddof=1))
    assert all("test_accuracy" not in r for r in result.records)
    under, anything = result.budgets
    assert under["best"]["rank"] == runner_up + 1
    assert under["best"]["test_accuracy"] == [_seed_noise(pipelines[runner_up], s, "test")
                                              for s in FRESH]
    assert anything["best"] == result.best
    assert "selection seeds 0, 1" in result.table and "report seeds 1000–1004" in result.table


def test_a_better_test_accuracy_does_not_sway_the_selection(tmp_path, monkeypatch):
    config, tokens, pipelines = _random_pipelines(4)
    rank = {_identity(p): i + 1 for i, p in enumerate(pipelines)}

    def accuracy(pipeline, seed, split):
        # Validation prefers rank 3; test prefers rank 1 by far (the pick of a selection that
        # looked at test accuracy).
        r = rank[_identity(pipeline)]
        if split == "validation":
            return 0.9 if r == 3 else 0.5
        return 0.99 if r == 1 else 0.6 + 0.01 * (seed % 3)

    workdir = _hand_written_search(tmp_path, config, tokens, [1e6] * 4)
    calls = _fake_training(monkeypatch, config, accuracy)
    result = retrain.run(workdir, top_k=4, seeds=2, report_seeds=3, flops_budgets=(),
                         progress=False)
    assert result.best["rank"] == 3
    assert result.best["test_accuracy"] == pytest.approx([0.61, 0.62, 0.6])
    assert {rank[k] for split, k, _ in calls if split == "test"} == {3}
    saved = json.loads(open(result.path).read())
    assert saved["best"]["rank"] == 3 and saved["budgets"] == []


def test_more_report_seeds_train_only_the_new_report_runs(tmp_path, monkeypatch):
    config, tokens, pipelines = _random_pipelines(3)
    workdir = _hand_written_search(tmp_path, config, tokens, [1e6, 2e6, 3e6])
    calls = _fake_training(monkeypatch, config)
    first = retrain.run(workdir, top_k=3, seeds=2, report_seeds=2, flops_budgets=(),
                        progress=False)
    assert first.trained == 3 * 2 + 2
    calls.clear()
    more = retrain.run(workdir, top_k=3, seeds=2, report_seeds=3, flops_budgets=(),
                       progress=False)
    best = _identity(first.best["pipeline"])
    assert calls == [("test", best, retrain.REPORT_SEED_BASE + 2)] and more.trained == 1
    assert more.best["test_accuracy"][:2] == first.best["test_accuracy"]
    assert more.records == first.records
    calls.clear()
    again = retrain.run(workdir, top_k=3, seeds=2, report_seeds=3, flops_budgets=(),
                        progress=False)
    assert calls == [] and again.trained == 0 and again.table == more.table


def test_results_json_holds_top_k_with_seeds(retrained):
    workdir, result, trials = retrained
    with open(os.path.join(workdir, "retrain", "results.json")) as f:
        saved = json.load(f)
    assert result.trained == 6  # selection: 2 pipelines x 2 seeds; report: 1 pipeline x 2 seeds
    records = saved["pipelines"]
    assert [r["rank"] for r in records] == [1, 2]
    ok = [t for t in trials if t["failure"] is None]
    by_key = {}
    for t in ok:
        key = retrain.pipeline_key(t["tokens"])
        by_key[key] = max(by_key.get(key, -math.inf), t["reward"])
    assert [r["reward"] for r in records] == sorted(by_key.values(), reverse=True)[:2]
    for r in records:
        assert r["selection_seeds"] == [0, 1]
        assert "test_accuracy" not in r  # the top-k are compared on validation only
        acc = np.asarray(r["validation_accuracy"])
        assert acc.shape == (2,) and np.all((acc >= 0) & (acc <= 1))
        assert r["validation_accuracy_mean"] == pytest.approx(acc.mean())
        assert r["validation_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
        # FLOPs and params are the search's, and the retrained network counts the same.
        logged = next(t for t in ok if retrain.pipeline_key(t["tokens"]) ==
                      retrain.pipeline_key(r["tokens"]))
        assert (r["flops"], r["params"]) == (logged["flops"], logged["params"])
        runs = [x for x in saved["runs"] if x["key"] == retrain.pipeline_key(r["tokens"])
                and x["phase"] == "selection"]
        assert sorted(x["seed"] for x in runs) == [0, 1]
        assert {x["measured_on"] for x in runs} == {"validation"}
        assert all((x["flops"], x["params"]) == (r["flops"], r["params"]) for x in runs)
        # Accuracy on the validation split (data.val_size = 300 digits): whole images.
        assert np.allclose(acc * 300, np.round(acc * 300))
    assert saved["settings"] == {"epochs": 1, "max_train": 256, "network": "masked"}
    assert saved["selection_seeds"] == [0, 1] and saved["report_seeds"] == [1000, 1001]
    chosen = max(records, key=lambda r: (r["validation_accuracy_mean"], -r["rank"]))
    best = saved["best"]
    assert best["rank"] == chosen["rank"] and best["report_seeds"] == [1000, 1001]
    test = np.asarray(best["test_accuracy"])
    assert best["test_accuracy_mean"] == pytest.approx(test.mean())
    # Accuracy on the test split (359 digits), from the report runs of the selected pipeline only.
    assert np.allclose(test * 359, np.round(test * 359))
    reported = [x for x in saved["runs"] if x["phase"] == "report"]
    assert sorted(x["seed"] for x in reported) == [1000, 1001]
    assert {x["key"] for x in reported} == {best["key"]}
    assert {x["measured_on"] for x in reported} == {"test"}
    assert saved["budgets"][0] == {"flops_budget": 1.0, "best": None}
    assert saved["budgets"][1]["best"] == best


def test_markdown_table(retrained):
    workdir, result, _ = retrained
    with open(os.path.join(workdir, "retrain", "results.md")) as f:
        md = f.read()
    assert md == result.table
    lines = md.splitlines()
    header = "| rank | search reward | validation accuracy (%) | FLOPs | params | pipeline |"
    start = lines.index(header)
    rows = [ln for ln in lines[start + 2:] if ln.startswith("| ")][:2]
    for r, row in zip(result.records, rows):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 6
        assert cells[0] == str(r["rank"]) and cells[1] == f"{r['reward']:.4f}"
        assert cells[2].startswith(f"{100 * r['validation_accuracy_mean']:.2f} ± "
                                   f"{100 * r['validation_accuracy_std']:.2f} (2 seeds)")
        assert "aug: " in cells[5] and "nas: res=8" in cells[5] and "hpo: opt=" in cells[5]
    assert "selection seeds 0, 1" in md and "report seeds 1000, 1001" in md
    header = ("| selected as | rank | validation accuracy (%) | test accuracy (%) | FLOPs | "
              "params | pipeline |")
    best_row = lines[lines.index(header) + 2]
    b = result.best
    assert best_row.startswith(
        f"| best | {b['rank']} | {100 * b['validation_accuracy_mean']:.2f} ± "
        f"{100 * b['validation_accuracy_std']:.2f} (2 seeds) | "
        f"{100 * b['test_accuracy_mean']:.2f} ± {100 * b['test_accuracy_std']:.2f} (2 seeds) |")
    assert "| FLOPs < 1 | - | none under the budget |" in md
    assert f"| FLOPs < 1e+03G | {b['rank']} |" in md


def test_rerun_retrains_nothing(retrained, monkeypatch, capsys):
    workdir, first, _ = retrained
    calls = _counting(monkeypatch)
    retrain.main([f"--workdir={workdir}", "--top_k=2", "--seeds=2", "--report_seeds=2",
                  "--epochs=1", "--flops_budgets=1,1e12", "--noprogress"])
    assert calls == []
    out = capsys.readouterr().out
    assert first.table in out and "(0 runs trained now)" in out
    with open(os.path.join(workdir, "retrain", "results.json")) as f:
        saved = json.load(f)
    assert saved["pipelines"] == json.loads(json.dumps(first.records))
    assert saved["best"] == json.loads(json.dumps(first.best))


def test_more_seeds_trains_only_the_new_runs(retrained, monkeypatch):
    workdir, first, _ = retrained
    calls = _counting(monkeypatch)
    result = retrain.run(workdir, seeds=3, progress=False)
    # The new selection seed for both pipelines; report runs only if it changed the selection.
    assert sorted(s for s in calls if s < retrain.REPORT_SEED_BASE) == [2, 2]
    fresh = [] if result.best["key"] == first.best["key"] else [1000, 1001]
    assert sorted(s for s in calls if s >= retrain.REPORT_SEED_BASE) == fresh
    assert result.trained == len(calls)
    for old, new in zip(first.records, result.records):
        assert new["validation_accuracy"][:2] == old["validation_accuracy"]
        assert len(new["validation_accuracy"]) == 3


def test_top_k_pipelines_skips_failures_and_repeats():
    def t(it, i, tokens, reward, failure=None):
        return {"iteration": it, "index": i, "tokens": {"a": tokens}, "reward": reward,
                "failure": failure, "accuracy": reward, "flops": 10.0 * it, "params": i}

    trials = [t(0, 0, [1], 0.5), t(0, 1, [2], 0.9, "nan_loss in epoch 1"), t(0, 2, [3], 0.7),
              t(1, 0, [1], 0.8), t(1, 1, [4], float("nan")), t(1, 2, [5], 0.7),
              t(1, 3, [6], 0.1)]
    top = retrain.top_k_pipelines(trials, 3)
    assert [(c.tokens["a"], c.reward, c.rank) for c in top] == [([1], 0.8, 1), ([3], 0.7, 2),
                                                                ([5], 0.7, 3)]
    assert (top[0].iteration, top[0].index) == (1, 0)  # the record of its best evaluation
    assert len(retrain.top_k_pipelines(trials, 10)) == 4
    with pytest.raises(ValueError):
        retrain.top_k_pipelines(trials, 0)


def test_mean_std_by_hand():
    assert retrain.mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert retrain.mean_std([0.25]) == (0.25, 0.0)


def test_best_under_budgets_by_hand():
    def r(rank, flops, acc, failed=0, test=0.5):
        return {"rank": rank, "flops": flops, "validation_accuracy_mean": acc,
                "selection_failed": failed, "selection_seeds": [0], "test_accuracy_mean": test}

    # Rank 7's test accuracy would win every budget: a selection must not look at it.
    records = [r(1, 596e6, 0.80), r(2, 490e6, 0.79), r(3, 650e6, 0.805), r(4, 700e6, 0.95),
               r(5, 300e6, 0.99, failed=1), r(6, 480e6, 0.79), r(7, 100e6, 0.10, test=1.0)]
    chosen = retrain.best_under_budgets(records, [500e6, 600e6, 700e6, 800e6, 400e6])
    ranks = [None if c["best"] is None else c["best"]["rank"] for c in chosen]
    # 700M is not under 700M; a pipeline whose every seed failed is never picked; a tie goes
    # to the better search rank; under 400M only rank 7 fits.
    assert ranks == [2, 1, 3, 4, 7]
    assert [c["flops_budget"] for c in chosen] == [500e6, 600e6, 700e6, 800e6, 400e6]
    assert retrain.select_best(records)["rank"] == 4
    assert retrain.select_best(records, 50e6) is None


def test_default_budgets():
    c = config_lib.base_config()
    assert retrain.default_budgets(c) == ()
    c.reward.kind = "mnas"
    c.reward.flops_target = 600e6
    assert retrain.default_budgets(c) == pytest.approx((500e6, 600e6, 700e6))
    c.retrain.flops_budgets = (800e6, 900e6, 1e9)
    assert retrain.default_budgets(c) == (800e6, 900e6, 1e9)


def test_selection_dataset_is_train_against_val_without_test():
    d = data.load("digits", val_size=300, seed=0)
    s = retrain.selection_dataset(d)
    assert np.array_equal(s.x_train, d.x_train) and np.array_equal(s.y_train, d.y_train)
    assert np.array_equal(s.x_val, d.x_val) and np.array_equal(s.y_val, d.y_val)
    assert len(s.x_test) == len(s.y_test) == 0  # nothing of the test split to measure
    assert s.mean == pytest.approx(d.x_train.astype(np.float64).mean(), rel=1e-5)
    capped = retrain.selection_dataset(d, max_train=100, seed=0)
    assert len(capped.y_train) == 100 and np.array_equal(capped.x_val, d.x_val)


def test_retrain_dataset_is_train_plus_val_against_test():
    d = data.load("digits", val_size=300, seed=0)
    r = retrain.retrain_dataset(d)
    assert len(r.y_train) == len(d.y_train) + len(d.y_val)
    assert np.array_equal(r.x_val, d.x_test) and np.array_equal(r.y_val, d.y_test)
    assert r.mean == pytest.approx(r.x_train.astype(np.float64).mean(), rel=1e-5)
    capped = retrain.retrain_dataset(d, max_train=100, seed=0)
    assert len(capped.y_train) == 100


def _workdir(tmp_path, trials):
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.json").write_text(config_lib.base_config().to_json_best_effort())
    if trials is not None:
        (path / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    return str(path)


_FAILED = {"iteration": 0, "index": 0, "tokens": {"aug": [0]}, "reward": 0.0,
           "failure": "nan_loss in epoch 1", "flops": 0.0, "params": 0}


@pytest.mark.parametrize("case, args, message", [
    ("missing", [], "no such workdir"),
    ("no_log", [], "has no trials.jsonl"),
    ("all_failed", [], "succeeded (all failed): nothing to retrain"),
    ("ok", ["--top_k=0"], "--top_k=0 must be >= 1"),
    ("ok", ["--report_seeds=0"], "--report_seeds=0 must be >= 1"),
    ("ok", ["--seeds=1001"], "--seeds=1001 must be <= 1000"),
    ("ok", ["--flops_budgets=5e8,abc"], "not a comma-separated list of numbers"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys, case, args, message):
    if case == "missing":
        workdir = str(tmp_path / "nope")
    else:
        trials = {"no_log": None, "all_failed": [_FAILED],
                  "ok": [{**_FAILED, "failure": None, "reward": 0.5}]}[case]
        workdir = _workdir(tmp_path, trials)
    with pytest.raises(SystemExit) as e:
        retrain.main([f"--workdir={workdir}", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_command_line_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ma2ml_jax.retrain",
                        f"--workdir={tmp_path / 'nope'}", "--top_k=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: no such workdir: {tmp_path / 'nope'}"


@pytest.mark.parametrize("key, value, message", [
    ("top_k", 0, "retrain.top_k=0 must be >= 1"),
    ("seeds", 0, "retrain.seeds=0 must be >= 1"),
    ("report_seeds", 0, "retrain.report_seeds=0 must be >= 1"),
    ("network", "big", "retrain.network='big' is not one of"),
    ("flops_budgets", (6e8, 0.0), "must all be > 0"),
])
def test_retrain_config_is_validated(key, value, message):
    c = config_lib.base_config()
    c.retrain[key] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(c)
