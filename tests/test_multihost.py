"""Multi-host runs: two processes on localhost with two fake CPU devices each
(the shape of a two-host pod slice, `_processes.py`) against one process with four. Proxy
training over a mesh spanning both processes: tests/test_train_cli.py (it shares the
single-process run of the end-to-end test)."""

import os
import subprocess
import sys
import textwrap

import pytest
from _processes import ROOT, env, one_process, read_log, two_processes

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from ma2ml_jax import config as config_lib, distributed, search
    from ma2ml_jax.spaces import make_pipeline_space

    distributed.initialize("auto")
    workdir, iterations, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = config_lib.base_config()
    c.search.algorithm = "random"  # its state (keys) is saved as MA2ML's is, with no compile
    c.search.iterations = iterations
    c.search.pipelines = 4
    c.seed = seed
    space = make_pipeline_space(c.spaces)
    calls = []

    def objective(pipelines):
        calls.append(1)
        return [float(np.mean(np.concatenate([space[a].encode(p[a]) for a in space.agents]) == 0))
                for p in pipelines]

    result = search.run(c, workdir, objective=objective, progress=False)
    print(f"trials {len(result.trials)} best {result.best_reward:.6f} calls {len(calls)}")
""")


def test_two_process_resume_from_the_checkpoint_of_process_0(tmp_path):
    """Process 0 alone saves and restores the searcher's orbax checkpoint; a two-process run
    resumed with more iterations ends with the single-process log, every process returns the
    same result, and an objective is evaluated on process 0 only. An error on process 0 stops
    the other process with a message, and nothing logged is lost."""
    workdir = str(tmp_path / "two")
    for iterations in (2, 3):
        two = two_processes(["-c", SCRIPT, workdir, str(iterations), "0"])
        for i, r in enumerate(two):
            assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    assert "restored from the checkpoint of iteration 2" in two[0].stdout
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    summary = [r.stdout.strip().splitlines()[-1] for r in two]
    assert summary[0].startswith("trials 12 best") and summary[0].endswith("calls 1")
    assert summary[1].split(" calls")[0] == summary[0].split(" calls")[0]  # the same result
    assert summary[1].endswith("calls 0")  # the objective ran on process 0 alone

    one = one_process(["-c", SCRIPT, str(tmp_path / "one"), "3", "0"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert read_log(workdir) == read_log(tmp_path / "one")

    # Another seed for the same workdir: process 0 refuses it before evaluating anything.
    again = two_processes(["-c", SCRIPT, workdir, "4", "1"])
    assert again[0].returncode != 0 and "holds a search with another config" in again[0].stderr
    assert again[1].returncode != 0
    assert "process 0 stopped with an error" in again[1].stderr
    assert read_log(workdir) == read_log(tmp_path / "one")  # nothing lost


@pytest.mark.parametrize("args, extra, message", [
    (["--distributed=true"], {}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ([], {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "two"},
     "must be integers"),
])
def test_bad_distributed_setup_is_one_line(tmp_path, args, extra, message):
    r = subprocess.run([sys.executable, "-m", "ma2ml_jax.train", f"--workdir={tmp_path}", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=env(1, **extra))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr
