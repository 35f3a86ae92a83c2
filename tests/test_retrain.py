import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from ma2ml_jax import config as config_lib
from ma2ml_jax import data, retrain, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search_config():
    """configs/default.py:local, shrunk: one iteration of 3 pipelines, 4 proxy steps each."""
    c = default.get_config("local")
    c.search.iterations = 1
    c.search.pipelines = 3
    c.evaluate.epochs = 1
    c.data.max_train = 128
    c.retrain.top_k = 2
    c.retrain.seeds = 2
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
    (1 epoch, 2 seeds)."""
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


def test_results_json_holds_top_k_with_seeds(retrained):
    workdir, result, trials = retrained
    with open(os.path.join(workdir, "retrain", "results.json")) as f:
        saved = json.load(f)
    assert result.trained == 4  # 2 pipelines x 2 seeds
    records = saved["pipelines"]
    assert [r["rank"] for r in records] == [1, 2]
    ok = [t for t in trials if t["failure"] is None]
    by_key = {}
    for t in ok:
        key = retrain.pipeline_key(t["tokens"])
        by_key[key] = max(by_key.get(key, -math.inf), t["reward"])
    assert [r["reward"] for r in records] == sorted(by_key.values(), reverse=True)[:2]
    for r in records:
        assert r["seeds"] == [0, 1]
        acc = np.asarray(r["test_accuracy"])
        assert acc.shape == (2,) and np.all((acc >= 0) & (acc <= 1))
        assert r["test_accuracy_mean"] == pytest.approx(acc.mean())
        assert r["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
        # FLOPs and params are the search's, and the retrained network counts the same.
        logged = next(t for t in ok if retrain.pipeline_key(t["tokens"]) ==
                      retrain.pipeline_key(r["tokens"]))
        assert (r["flops"], r["params"]) == (logged["flops"], logged["params"])
        runs = [x for x in saved["runs"] if x["key"] == retrain.pipeline_key(r["tokens"])]
        assert sorted(x["seed"] for x in runs) == [0, 1]
        assert all((x["flops"], x["params"]) == (r["flops"], r["params"]) for x in runs)
        # Accuracy on the test split (359 digits): a whole number of correct images.
        assert np.allclose(acc * 359, np.round(acc * 359))
    assert saved["settings"] == {"epochs": 1, "max_train": 256, "network": "masked"}
    assert saved["budgets"][0] == {"flops_budget": 1.0, "best": None}
    best = max(records, key=lambda r: (r["test_accuracy_mean"], -r["rank"]))
    assert saved["budgets"][1]["best"]["rank"] == best["rank"]


def test_markdown_table(retrained):
    workdir, result, _ = retrained
    with open(os.path.join(workdir, "retrain", "results.md")) as f:
        md = f.read()
    assert md == result.table
    lines = md.splitlines()
    header = "| rank | search reward | test accuracy (%) | FLOPs | params | pipeline |"
    assert lines[2] == header
    rows = [ln for ln in lines[4:] if ln.startswith("| ")][:2]
    for r, row in zip(result.records, rows):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 6
        assert cells[0] == str(r["rank"]) and cells[1] == f"{r['reward']:.4f}"
        assert cells[2].startswith(f"{100 * r['test_accuracy_mean']:.2f} ± "
                                   f"{100 * r['test_accuracy_std']:.2f} (2 seeds)")
        assert "aug: " in cells[5] and "nas: res=8" in cells[5] and "hpo: opt=" in cells[5]
    assert "## Best retrained pipeline under each FLOPs budget" in md
    assert "| < 1 | - | none under the budget |" in md


def test_rerun_retrains_nothing(retrained, monkeypatch, capsys):
    workdir, first, _ = retrained
    calls = _counting(monkeypatch)
    retrain.main([f"--workdir={workdir}", "--top_k=2", "--seeds=2", "--epochs=1",
                  "--flops_budgets=1,1e12", "--noprogress"])
    assert calls == []
    out = capsys.readouterr().out
    assert first.table in out and "(0 runs trained now)" in out
    with open(os.path.join(workdir, "retrain", "results.json")) as f:
        assert json.load(f)["pipelines"] == json.loads(json.dumps(first.records))


def test_more_seeds_trains_only_the_new_runs(retrained, monkeypatch):
    workdir, first, _ = retrained
    calls = _counting(monkeypatch)
    result = retrain.run(workdir, seeds=3, progress=False)
    assert sorted(calls) == [2, 2] and result.trained == 2
    for old, new in zip(first.records, result.records):
        assert new["test_accuracy"][:2] == old["test_accuracy"]
        assert len(new["test_accuracy"]) == 3


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
    def r(rank, flops, acc, failed=0):
        return {"rank": rank, "flops": flops, "test_accuracy_mean": acc, "failed": failed,
                "seeds": [0]}

    records = [r(1, 596e6, 0.80), r(2, 490e6, 0.79), r(3, 650e6, 0.805), r(4, 700e6, 0.95),
               r(5, 300e6, 0.99, failed=1), r(6, 480e6, 0.79)]
    chosen = retrain.best_under_budgets(records, [500e6, 600e6, 700e6, 800e6, 400e6])
    ranks = [None if c["best"] is None else c["best"]["rank"] for c in chosen]
    # 700M is not under 700M; a pipeline whose every seed failed is never picked; a tie goes
    # to the better search rank; nothing fits under 400M.
    assert ranks == [2, 1, 3, 4, None]
    assert [c["flops_budget"] for c in chosen] == [500e6, 600e6, 700e6, 800e6, 400e6]


def test_default_budgets():
    c = config_lib.base_config()
    assert retrain.default_budgets(c) == ()
    c.reward.kind = "mnas"
    c.reward.flops_target = 600e6
    assert retrain.default_budgets(c) == pytest.approx((500e6, 600e6, 700e6))
    c.retrain.flops_budgets = (800e6, 900e6, 1e9)
    assert retrain.default_budgets(c) == (800e6, 900e6, 1e9)


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
    ("network", "big", "retrain.network='big' is not one of"),
    ("flops_budgets", (6e8, 0.0), "must all be > 0"),
])
def test_retrain_config_is_validated(key, value, message):
    c = config_lib.base_config()
    c.retrain[key] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(c)
