"""Kill-and-resume: a search killed with SIGKILL in the middle of an iteration
and rerun with the same workdir ends with the same trial log as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax import checkpoint, termination

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from ma2ml_jax import config as config_lib, search
    from ma2ml_jax.spaces import make_pipeline_space

    workdir, algorithm, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.iterations = 5
    c.search.pipelines = 4
    space = make_pipeline_space(c.spaces)
    calls = []

    def objective(pipelines):
        calls.append(1)
        if len(calls) == kill_at:  # in the middle of an iteration: asked, not yet told
            os.kill(os.getpid(), signal.SIGKILL)
        return [float(np.mean(np.concatenate([space[a].encode(p[a]) for a in space.agents]) == 0))
                for p in pipelines]

    search.run(c, workdir, objective=objective, progress=False)
    print("evaluated iterations:", len(calls))
""")


def _run(workdir, algorithm, kill_at):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), algorithm, str(kill_at)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _log(workdir):
    with open(os.path.join(workdir, "trials.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


@pytest.mark.parametrize("algorithm", ["ma2ml", "tpe"])
def test_sigkill_mid_iteration_then_resume_equals_uninterrupted(tmp_path, algorithm):
    full = _run(tmp_path / "full", algorithm, 0)
    assert full.returncode == 0, full.stderr
    killed = _run(tmp_path / "killed", algorithm, 3)  # killed while evaluating iteration 2
    assert killed.returncode == -signal.SIGKILL
    assert len(_log(tmp_path / "killed")) == 8  # iterations 0 and 1 were logged
    resumed = _run(tmp_path / "killed", algorithm, 0)
    assert resumed.returncode == 0, resumed.stderr
    assert "evaluated iterations: 3" in resumed.stdout  # 2, 3 and 4: none lost, none twice
    if algorithm == "ma2ml":  # its state (replay buffer, keys, optimizers) came from orbax
        assert "restored from the checkpoint of iteration 2" in resumed.stderr + resumed.stdout
    assert _log(tmp_path / "killed") == _log(tmp_path / "full")


def test_savable_round_trip_keeps_keys_and_dtypes(tmp_path):
    state = {"key": jax.random.key(3), "w": jnp.arange(4, dtype=jnp.bfloat16),
             "n": np.int32(7), "host": np.ones((2, 2), np.float64)}
    saved = checkpoint.to_savable(state)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(saved))
    back = checkpoint.from_savable(saved, state)
    assert jax.random.key_data(back["key"]).tolist() == jax.random.key_data(state["key"]).tolist()
    assert back["w"].dtype == jnp.bfloat16 and back["host"].dtype == np.float64
    ckpt = checkpoint.SearchCheckpoints(str(tmp_path))
    ckpt.save(1, state, {"asked": 5})
    ckpt.save(2, state, {"asked": 9})
    assert ckpt.latest_step(at_most=1) == 1 and ckpt.latest_step(at_most=10) == 2
    restored, counters, evaluator = ckpt.restore(2, state, {"asked": 0})
    assert counters == {"asked": 9} and evaluator == ()  # an evaluator without state
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert not checkpoint.checkpointable({"study": object()})


def test_the_evaluator_state_is_saved_beside_the_searchers(tmp_path):
    """The layerwise evaluator's state (its epochs per episode) comes back from a new manager
    (a resumed process); a checkpoint that holds none restores None, and the search rebuilds
    the state from the trial log then."""
    state, start = {"w": np.arange(3.0)}, termination.EpochBudget(10, 3)
    ckpt = checkpoint.SearchCheckpoints(str(tmp_path))
    ckpt.save(1, state, {}, termination.EpochBudget(4, 3))
    ckpt.save(2, state, {})
    ckpt.close()
    ckpt = checkpoint.SearchCheckpoints(str(tmp_path))
    _, _, evaluator = ckpt.restore(1, state, {}, start)
    assert evaluator == termination.EpochBudget(4, 3) and type(evaluator.epochs) is int
    assert ckpt.restore(2, state, {}, start)[2] is None
