import json
import os

import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import search
from ma2ml_jax.errors import ConfigError, UserError
from ma2ml_jax.spaces import make_pipeline_space


def _config(iterations=3, pipelines=4, seed=0, algorithm="random"):
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.iterations = iterations
    c.search.pipelines = pipelines
    c.seed = seed
    return c


def _objective_for(config):
    space = make_pipeline_space(config.spaces)

    def objective(pipelines):
        # A known deterministic reward: the fraction of decisions at their first choice.
        out = []
        for p in pipelines:
            tokens = np.concatenate([space[a].encode(p[a]) for a in space.agents])
            out.append(float(np.mean(tokens == 0)))
        return out

    return objective


def _read(workdir):
    with open(os.path.join(workdir, search.TRIALS)) as f:
        return [json.loads(line) for line in f]


def test_run_with_objective_logs_every_pipeline(tmp_path):
    c = _config()
    result = search.run(c, str(tmp_path), objective=_objective_for(c), progress=False)
    trials = _read(tmp_path)
    assert len(trials) == 12 == len(result.trials)
    assert [t["iteration"] for t in trials] == [i for i in range(3) for _ in range(4)]
    for key in ("iteration", "index", "pipeline", "tokens", "reward", "accuracy", "flops",
                "params", "wall_time", "failure"):
        assert key in trials[0]
    # The best is the max of the logged rewards and its tokens decode to its pipeline.
    best = max(trials, key=lambda t: t["reward"])
    assert result.best_reward == best["reward"]
    assert result.space.decode(best["tokens"]) == best["pipeline"] == result.best_pipeline
    # Rewards match the objective recomputed from the logged pipeline.
    assert best["reward"] == _objective_for(c)([best["pipeline"]])[0]
    assert "Best pipeline of 12 evaluated" in search.summary(result)


def test_an_evaluators_own_scalars_are_logged_under_extra(tmp_path):
    """Metrics beyond the standard ones (Q-learning's N_epoch, epochs, attempts, clamped layers)
    are kept if they are scalars or lists of scalars; a plain reward adds no "extra"."""
    c = _config(iterations=1)
    result = search.run(c, str(tmp_path / "extra"), progress=False, objective=lambda ps: [
        {"reward": 0.5, "accuracy": 0.5, "n_epoch": np.int64(3 + i), "attempts": 2,
         "note": "ok", "clamped": (np.int32(3), 5), "array": np.zeros(2), "nested": {"a": 1}}
        for i in range(len(ps))])
    trials = _read(tmp_path / "extra")
    assert [t["extra"] for t in trials] == [
        {"n_epoch": 3 + i, "attempts": 2, "note": "ok", "clamped": [3, 5]} for i in range(4)]
    assert result.trials[0]["extra"]["n_epoch"] == 3
    search.run(c, str(tmp_path / "plain"), objective=_objective_for(c), progress=False)
    assert not any("extra" in t for t in _read(tmp_path / "plain"))


# ma2ml_onpolicy resumes through the same code as ma2ml_paper: CI's slow step runs it.
@pytest.mark.parametrize("algorithm", [
    pytest.param(a, marks=pytest.mark.slow) if a == "ma2ml_onpolicy" else a
    for a in config_lib.ALGORITHMS])
def test_resume_equals_uninterrupted_run(tmp_path, algorithm):
    c5 = _config(iterations=5, algorithm=algorithm)
    full = search.run(c5, str(tmp_path / "full"), objective=_objective_for(c5), progress=False)
    c3 = _config(iterations=3, algorithm=algorithm)
    search.run(c3, str(tmp_path / "resumed"), objective=_objective_for(c3), progress=False)
    # Simulate a kill in the middle of iteration 3: a partial iteration and a torn last line.
    with open(tmp_path / "resumed" / search.TRIALS, "a") as f:
        f.write(json.dumps({**full.trials[12], "iteration": 3}) + "\n")
        f.write('{"iteration": 3, "ind')
    calls = []
    objective = _objective_for(c5)

    def counting(pipelines):
        calls.append(len(pipelines))
        return objective(pipelines)

    resumed = search.run(c5, str(tmp_path / "resumed"), objective=counting, progress=False)
    assert calls == [4, 4]  # only iterations 3 and 4 were evaluated again
    strip = lambda ts: [{k: v for k, v in t.items() if k != "wall_time"} for t in ts]  # noqa: E731
    assert strip(_read(tmp_path / "resumed")) == strip(_read(tmp_path / "full"))
    assert resumed.best_reward == full.best_reward


def test_resume_refuses_another_config(tmp_path):
    c = _config(iterations=1)
    search.run(c, str(tmp_path), objective=_objective_for(c), progress=False)
    c2 = _config(iterations=1, seed=7)
    with pytest.raises(ConfigError, match="differs at seed"):
        search.run(c2, str(tmp_path), objective=_objective_for(c2), progress=False)


def test_different_seeds_sample_different_pipelines(tmp_path):
    a, b = _config(iterations=1, seed=0), _config(iterations=1, seed=1)
    ra = search.run(a, str(tmp_path / "a"), objective=_objective_for(a), progress=False)
    rb = search.run(b, str(tmp_path / "b"), objective=_objective_for(b), progress=False)
    assert [t["tokens"] for t in ra.trials] != [t["tokens"] for t in rb.trials]


def test_objective_with_wrong_length_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="returned 1 values for 4 pipelines"):
        search.run(_config(iterations=1), str(tmp_path), objective=lambda ps: [0.0],
                   progress=False)


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        search.run(_config(iterations=1), str(blocker / "sub"), objective=lambda ps: [0.0] * 4,
                   progress=False)


@pytest.mark.parametrize("key, value, message", [
    ("search.algorithm", "bayes", "search.algorithm='bayes' is not one of 'random', 'tpe', "),
    ("search.pipelines", 0, "search.pipelines=0 must be >= 1"),
])
def test_bad_config_values(tmp_path, key, value, message):
    c = _config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError) as e:
        search.run(c, str(tmp_path), objective=lambda ps: [0.0] * len(ps), progress=False)
    assert message in str(e.value)


@pytest.mark.parametrize("algorithm, key, value, message", [
    ("ma2ml", "ma2ml.tau", 0.0, "ma2ml.tau=0.0 must be in (0, 1]"),
    ("ma2ml_onpolicy", "ma2ml_paper.actor_actions", "buffer",
     "ma2ml_paper.actor_actions='buffer' is not"),
    ("ma2ml_paper", "ma2ml_paper.critic_target", "ranks",
     "ma2ml_paper.critic_target='ranks' is not"),
    ("ma2ml", "ma2ml.lambda", 0.1,
     "ma2ml.lambda is not a key of ma2ml; valid: policy, hidden, lam"),
    ("lite", "lite.baseline_decay", 1.0, "lite.baseline_decay=1.0 must be in [0, 1)"),
    ("random", "search.repeat_rounds", -1, "search.repeat_rounds=-1 must be >= 0"),
])
def test_bad_searcher_options_name_the_key(tmp_path, algorithm, key, value, message):
    c = _config(algorithm=algorithm)
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError) as e:
        search.run(c, str(tmp_path), objective=lambda ps: [0.0] * len(ps), progress=False)
    assert message in str(e.value)


def test_bad_space_kind_names_choices(tmp_path):
    c = _config()
    c.spaces.nas.kind = "resnet"
    with pytest.raises(ConfigError, match="spaces.nas.kind='resnet' is not one of"):
        search.run(c, str(tmp_path), objective=lambda ps: [0.0] * len(ps), progress=False)


def test_a_failing_trial_log_write_loses_nothing(tmp_path, capsys):
    """The disk fills (here: the log turns into a directory) during iteration 1: a clear error,
    the iteration's results on stderr, and a rerun resumes to the uninterrupted run's log."""
    c = _config(iterations=3)
    full = search.run(c, str(tmp_path / "full"), objective=_objective_for(c), progress=False)
    workdir = tmp_path / "broken"
    objective = _objective_for(c)
    calls = []

    def breaking(pipelines):
        calls.append(1)
        if len(calls) == 2:
            log = workdir / search.TRIALS
            saved = log.read_text()
            log.unlink()
            log.mkdir()
            (workdir / "saved.jsonl").write_text(saved)
        return objective(pipelines)

    with pytest.raises(UserError, match="cannot append to the trial log"):
        search.run(c, str(workdir), objective=breaking, progress=False)
    printed = [json.loads(line) for line in capsys.readouterr().err.splitlines()
               if line.startswith("{")]
    assert [t["iteration"] for t in printed] == [1] * 4
    (workdir / search.TRIALS).rmdir()
    (workdir / search.TRIALS).write_text((workdir / "saved.jsonl").read_text() +
                                         "".join(json.dumps(t) + "\n" for t in printed))
    search.run(c, str(workdir), objective=objective, progress=False)
    strip = lambda ts: [{k: v for k, v in t.items() if k != "wall_time"} for t in ts]  # noqa: E731
    assert strip(_read(workdir)) == strip(_read(tmp_path / "full"))
    assert len(full.trials) == 12
