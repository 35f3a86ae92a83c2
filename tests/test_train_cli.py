"""The command line: one-line errors (exit code 2), --help, an end-to-end run that resumes."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "MA2ML_JAX_CACHE": os.path.join(ROOT, ".pytest_jax_cache")}
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


def test_end_to_end_local_run_then_resume(tmp_path):
    workdir = tmp_path / "run"
    r = _train("--config=configs/default.py:local", f"--workdir={workdir}", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Best pipeline of 8 evaluated" in r.stdout
    for section in ("[aug] augment", "[nas] macro", "[hpo] recipe", "reward"):
        assert section in r.stdout
    with open(workdir / "trials.jsonl") as f:
        trials = [json.loads(line) for line in f]
    assert len(trials) == 8
    ok = [t for t in trials if not t["failure"]]
    assert ok and all(0.0 <= t["accuracy"] <= 1.0 and t["flops"] > 0 and t["params"] > 0
                      for t in ok)
    # The proxy networks learn: the best beats chance (10 classes) on the validation split.
    assert max(t["accuracy"] for t in ok) > 0.2
    # Resuming with more iterations keeps the first 8 trials and adds 4.
    r2 = _train("--config=configs/default.py:local", "--config.search.iterations=3",
                f"--workdir={workdir}", "--noprogress")
    assert r2.returncode == 0, r2.stderr[-3000:]
    with open(workdir / "trials.jsonl") as f:
        trials2 = [json.loads(line) for line in f]
    assert trials2[:8] == trials and len(trials2) == 12
