"""The real-training benchmark (bench.real_search): its curves, summary and the runs it drives."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from _processes import ROOT, env

from ma2ml_jax import cli
from ma2ml_jax.bench import real_search


def test_curves_are_the_best_so_far_and_the_cumulative_wall_time():
    trials = [{"reward": r, "wall_time": w} for r, w in ((0.2, 5.0), (0.1, 1.0), (0.5, 2.0),
                                                          (0.4, None))]
    c = real_search.curves(trials)
    np.testing.assert_allclose(c["best"], [0.2, 0.2, 0.5, 0.5])
    np.testing.assert_allclose(c["wall"], [5.0, 6.0, 8.0, 8.0])


def test_summary_counts_evaluations_to_within_the_gap_of_the_best_run():
    results = {"a": {0: {"best": [0.1, 0.5, 0.5, 0.9], "wall": [1, 2, 3, 4], "best_reward": 0.9,
                         "failed": 0},
                     1: {"best": [0.3, 0.3, 0.3, 0.3], "wall": [1, 2, 3, 9], "best_reward": 0.3,
                         "failed": 1}},
               "b": {0: {"best": [0.895, 0.895, 0.9, 0.9], "wall": [2, 4, 6, 8],
                         "best_reward": 0.9, "failed": 0}}}
    s = real_search.summarize(results, per_iteration=2, gap=0.01)
    assert s["level"] == pytest.approx(0.89)
    a, b = s["searchers"]["a"], s["searchers"]["b"]
    assert (a["final_median"], a["final_min"], a["final_max"]) == pytest.approx((0.6, 0.3, 0.9))
    assert a["by_iteration"] == pytest.approx([0.4, 0.6])  # medians after 2 and 4 evaluations
    assert a["reached"] == 1 and math.isinf(a["evals_to_level"])  # median of (4, inf)
    assert b["reached"] == 1 and b["evals_to_level"] == 1
    assert a["wall_s"] == pytest.approx(6.5) and a["failed"] == 1
    assert "> 4 (1/2)" in real_search.table(s, budget=4)


def test_each_run_gets_its_seed_and_searcher_without_touching_the_config():
    config = cli.load_config("configs/full_space_digits.py:local", root=ROOT)
    frozen = real_search.run_config(config, "ma2ml_frozen", 3)
    paper = real_search.run_config(config, "ma2ml_paper", 1)
    assert (frozen.seed, frozen.ma2ml.actor_lr, frozen.search.algorithm) == (3, 1e-9, "ma2ml")
    assert (paper.seed, paper.search.algorithm) == (1, "ma2ml_paper")
    assert config.seed == 0 and config.ma2ml.actor_lr != 1e-9


def test_the_full_space_config_holds_the_papers_spaces():
    from ma2ml_jax import spaces

    full = spaces.make_pipeline_space(cli.load_config("configs/full_space_digits.py",
                                                      root=ROOT).spaces)
    paper = spaces.make_pipeline_space(cli.load_config("configs/cifar10.py", root=ROOT).spaces)
    assert full.agents == paper.agents
    assert all(full[a].n_decisions == paper[a].n_decisions for a in paper.agents)


@pytest.mark.slow
def test_the_benchmark_runs_at_its_smallest_size_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "ma2ml_jax.bench.real_search",
           "--config=configs/full_space_digits.py:local", "--searchers=random", "--seeds=1",
           f"--out={tmp_path}", "--noprogress"]
    r = subprocess.run(cmd, cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "real_search.json").read_text())
    best = record["results"]["random"]["0"]["best"]
    assert len(best) == 4 and best == sorted(best)
    assert (tmp_path / "real_search.png").stat().st_size > 0
    # A second call reads the finished run back instead of training again.
    again = subprocess.run(cmd, cwd=ROOT, env=env(1), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "real_search.json").read_text())["results"] == record[
        "results"]
