"""Multi-host runs (issue 6, item 5): two processes on localhost with two fake CPU devices each
(the shape of a two-host pod slice) against one process with four.

Each process is started the way a pod runs it: the same command, with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set, so `distributed.initialize("auto")` joins them.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in (
        "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["PYTHONPATH"] = ROOT
    env["JAX_PLATFORMS"] = "cpu"
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs `python ARGS` as processes 0 and 1 of one run (2 fake CPU devices each)."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _one_process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=_env(4))


def _log(workdir) -> list[dict]:
    with open(os.path.join(workdir, "trials.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


def test_two_processes_train_the_pipelines_of_one_process(tmp_path):
    """Proxy training sharded over a mesh spanning both processes gives the single-process
    trial log (pipelines, rewards, accuracies, losses), and only process 0 writes or prints."""
    # 3 pipelines on 4 devices: process 0 trains 2, process 1 one and the padding.
    args = ["-m", "ma2ml_jax.train", "--config=configs/default.py:local",
            "--config.search.pipelines=3", "--config.search.iterations=1",
            "--config.evaluate.strategy=unrolled", "--noprogress"]
    two = _two_processes(args + [f"--workdir={tmp_path / 'two'}"])
    for i, r in enumerate(two):
        assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    one = _one_process(args + [f"--workdir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]

    assert "2 processes train each iteration's pipelines over 4 devices" in two[0].stdout
    assert "Best pipeline of 3 evaluated" in two[0].stdout
    assert "Best pipeline" not in two[1].stdout + two[1].stderr  # process 1 prints nothing
    assert "data:" not in two[1].stdout + two[1].stderr
    logged = _log(tmp_path / "two")
    assert len(logged) == 3  # written once, not once per process
    assert logged == _log(tmp_path / "one")
    assert max(t["accuracy"] for t in logged) > 0.3  # real training, not chance everywhere
    assert len(os.listdir(tmp_path / "two" / "tensorboard")) == 1


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from ma2ml_jax import config as config_lib, distributed, search

    distributed.initialize("auto")
    workdir, iterations, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = config_lib.base_config()
    c.search.algorithm = "ma2ml"
    c.search.iterations = iterations
    c.search.pipelines = 4
    c.seed = seed
    space = search.make_pipeline_space(c.spaces)
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
    same result, and an objective is evaluated on process 0 only."""
    workdir = str(tmp_path / "two")
    for iterations in (2, 3):
        two = _two_processes(["-c", SCRIPT, workdir, str(iterations), "0"])
        for i, r in enumerate(two):
            assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    assert "restored from the checkpoint of iteration 2" in two[0].stdout
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    summary = [r.stdout.strip().splitlines()[-1] for r in two]
    assert summary[0].startswith("trials 12 best") and summary[0].endswith("calls 1")
    assert summary[1].split(" calls")[0] == summary[0].split(" calls")[0]  # the same result
    assert summary[1].endswith("calls 0")  # the objective ran on process 0 alone

    one = _one_process(["-c", SCRIPT, str(tmp_path / "one"), "3", "0"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert _log(workdir) == _log(tmp_path / "one")


def test_an_error_on_process_0_stops_the_others_with_a_message(tmp_path):
    workdir = str(tmp_path / "run")
    first = _two_processes(["-c", SCRIPT, workdir, "1", "0"])
    assert [r.returncode for r in first] == [0, 0]
    # Another seed for the same workdir: process 0 refuses it before evaluating anything.
    again = _two_processes(["-c", SCRIPT, workdir, "2", "1"])
    assert again[0].returncode != 0 and "holds a search with another config" in again[0].stderr
    assert again[1].returncode != 0
    assert "process 0 stopped with an error" in again[1].stderr
    assert len(_log(workdir)) == 4  # nothing lost


@pytest.mark.parametrize("args, env, message", [
    (["--distributed=true"], {}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ([], {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "two"},
     "must be integers"),
])
def test_bad_distributed_setup_is_one_line(tmp_path, args, env, message):
    r = subprocess.run([sys.executable, "-m", "ma2ml_jax.train", f"--workdir={tmp_path}", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=_env(1, **env))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr
