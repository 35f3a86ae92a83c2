"""The command line: one-line errors (exit code 2), --help, an end-to-end run that resumes, and the
same run on two processes (multi-host)."""

import os
import subprocess
import sys

import pytest
from _processes import ROOT, one_process, read_log, two_processes


def _train(*args, cwd=ROOT, timeout=300):
    env = dict(os.environ)  # with the session's compilation cache (tests/conftest.py)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "ma2ml_jax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--config.search.iterationz=3"],
     "unknown config key --config.search.iterationz: config.search has no key 'iterationz'; "
     "valid keys: algorithm, avoid_repeats, checkpoint, iterations, pipelines, repeat_rounds"),
    (["--config.nope=1"], "config has no key 'nope'; valid keys: data, evaluate"),
    (["--config.search.iterations=2.5"], "--config.search.iterations=2.5: wrong type"),
    (["--config.data.source=mnist"], "unknown data source 'mnist'; valid sources: digits"),
    (["--config=configs/missing.py"], "cannot load --config"),
    (["--config.search.algorithm=bayes"], "search.algorithm='bayes' is not one of 'random'"),
    # The paper's algorithm is a searcher of the CLI, with its own config section.
    (["--config.search.algorithm=ma2ml_paper", "--config.ma2ml_paper.tau=0.0"],
     "ma2ml_paper.tau=0.0 must be in (0, 1]"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, args, message):
    r = _train(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_traceback_on_request(tmp_path):
    r = _train("--config.data.source=mnist", "--traceback", f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_documents_the_flags():
    r = _train("--help")
    assert r.returncode == 0
    for flag in ("--config:", "--workdir:", "--[no]traceback:", "--[no]progress:"):
        assert flag in r.stdout
    assert "--config.KEY=VALUE" in r.stdout


# configs/default.py:local with 3 pipelines on 4 devices, trained together ("unrolled"): one
# process trains its 3 on the 4 devices, two processes theirs on 2 + 2 (process 1: one pipeline
# and the padding).
LOCAL = ["--config=configs/default.py:local", "--config.search.pipelines=3",
         "--config.evaluate.strategy=unrolled", "--noprogress"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One process, 4 CPU devices: 2 iterations of configs/default.py:local (3 pipelines)."""
    workdir = tmp_path_factory.mktemp("local") / "run"
    r = one_process(["-m", "ma2ml_jax.train", *LOCAL, f"--workdir={workdir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir, r, read_log(workdir)


@pytest.mark.slow  # the main job through the CLI twice (compiles included): CI's slow step runs it
def test_end_to_end_local_run_then_resume(local_run):
    workdir, r, trials = local_run
    assert "Best pipeline of 6 evaluated" in r.stdout
    for section in ("[aug] augment", "[nas] macro", "[hpo] recipe", "reward"):
        assert section in r.stdout
    assert len(trials) == 6
    ok = [t for t in trials if not t["failure"]]
    assert ok and all(0.0 <= t["accuracy"] <= 1.0 and t["flops"] > 0 and t["params"] > 0
                      for t in ok)
    # The proxy networks learn: the best beats chance (10 classes) on the validation split.
    assert max(t["accuracy"] for t in ok) > 0.2
    # Resuming with more iterations keeps the first 6 trials and adds 3.
    r2 = one_process(["-m", "ma2ml_jax.train", *LOCAL, "--config.search.iterations=3",
                      f"--workdir={workdir}"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    trials2 = read_log(workdir)
    assert trials2[:6] == trials and len(trials2) == 9


@pytest.mark.slow  # two processes compile and train the masked network: minutes; CI runs it
def test_two_processes_train_the_pipelines_of_one_process(local_run, tmp_path):
    """Proxy training sharded over a mesh spanning two processes (2 CPU devices
    each, `_processes.py`) logs what the single-process run logged (pipelines, rewards,
    accuracies, losses), and only process 0 writes or prints."""
    workdir = tmp_path / "two"
    two = two_processes(["-m", "ma2ml_jax.train", *LOCAL, "--config.search.iterations=1",
                         f"--workdir={workdir}"])
    for i, r in enumerate(two):
        assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    assert "2 processes train each iteration's pipelines over 4 devices" in two[0].stdout
    assert "Best pipeline of 3 evaluated" in two[0].stdout
    assert "Best pipeline" not in two[1].stdout + two[1].stderr  # process 1 prints nothing
    assert "data:" not in two[1].stdout + two[1].stderr
    logged = read_log(workdir)
    assert len(logged) == 3  # written once, not once per process
    assert logged == local_run[2][:3]  # the first iteration of the single-process run
    assert len(os.listdir(workdir / "tensorboard")) == 1
