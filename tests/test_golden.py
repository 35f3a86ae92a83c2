"""Golden trial logs: fixed-seed searches write the trial logs stored in tests/golden/.

Every searcher on a deterministic objective (its asked pipelines and their rewards), and a random
search of the tiny config that trains real proxy networks (its pipelines, with accuracies to a
tolerance that other CPUs' floating point keeps). A change that should not alter behaviour, such
as moving code between modules, keeps these logs; one that alters it on purpose regenerates them
(`-m ''` adds the tiny config's slow one), then checks them in a second run:

    MA2ML_JAX_WRITE_GOLDEN=1 python -m pytest -q -n 0 tests/test_golden.py  # writes
    python -m pytest -q -n 0 tests/test_golden.py                         # checks

A writing run checks nothing: each test skips once it has written its log, so a log can never
pass against itself in the run that wrote it.
"""

import json
import os

import numpy as np
import pytest

from configs import default as default_config
from ma2ml_jax import config as config_lib
from ma2ml_jax import search
from ma2ml_jax.spaces import make_pipeline_space

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
WRITE = os.environ.get("MA2ML_JAX_WRITE_GOLDEN") == "1"


def _objective_for(space):
    """A fixed random table of per-decision values plus one pairwise term: searchers that learn
    move away from random sampling, so their logs depend on their updates."""
    rng = np.random.default_rng(7)
    tables = {a: rng.uniform(size=(space[a].n_decisions, space[a].max_size))
              for a in space.agents}

    def objective(pipelines):
        out = []
        for p in pipelines:
            tokens = {a: np.asarray(space[a].encode(p[a])) for a in space.agents}
            values = [tables[a][np.arange(len(t)), t].mean() for a, t in tokens.items()]
            out.append(float(np.mean(values) + 0.1 * (tokens["nas"][0] == tokens["hpo"][0])))
        return out

    return objective


def _log(workdir, reward_key="reward"):
    with open(os.path.join(workdir, search.TRIALS)) as f:
        trials = [json.loads(line) for line in f]
    return [{"iteration": t["iteration"], "tokens": t["tokens"], "reward": t[reward_key],
             "failure": t["failure"]} for t in trials]


def _check(name, got, tolerance):
    path = os.path.join(GOLDEN, f"{name}.json")
    if WRITE:
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(t) for t in got) + "\n]\n")
        pytest.skip(f"wrote {path}; rerun without MA2ML_JAX_WRITE_GOLDEN to check it")
    with open(path) as f:
        want = json.load(f)
    assert [(t["iteration"], t["tokens"], t["failure"]) for t in got] == [
        (t["iteration"], t["tokens"], t["failure"]) for t in want]
    np.testing.assert_allclose([t["reward"] for t in got], [t["reward"] for t in want],
                               atol=tolerance)


@pytest.mark.parametrize("algorithm", config_lib.ALGORITHMS)
def test_searcher_on_an_objective_writes_the_golden_log(algorithm, tmp_path):
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.iterations = 3
    c.search.pipelines = 4
    c.seed = 3
    space = make_pipeline_space(c.spaces)
    search.run(c, str(tmp_path), objective=_objective_for(space), progress=False)
    _check(f"objective_{algorithm}", _log(tmp_path), 1e-6)


@pytest.mark.slow  # a minute of real training; CI's slow step runs it
def test_tiny_config_writes_the_golden_log(tmp_path):
    c = default_config.get_config("local")
    c.search.algorithm = "random"
    c.search.iterations = 1
    c.search.pipelines = 2
    # 3 epochs of 512 images: accuracies well above chance, so that the check can fail.
    search.run(c, str(tmp_path), progress=False)
    # 300 validation images: 0.05 is 15 of them, room for another CPU's rounding over 3 epochs,
    # far below what a changed data order, augmentation or network does.
    _check("tiny_random", _log(tmp_path, "accuracy"), 0.05)
