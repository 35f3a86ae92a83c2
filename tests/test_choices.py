"""A user's own decision space (`choices`): decoding by name, the config and `space=` routes,
errors, resume, every searcher, report and retrain on such a workdir, and the README example."""

import itertools
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import report, retrain, search, spaces
from ma2ml_jax.bench.objectives import synthetic_space
from ma2ml_jax.errors import EXIT_USER_ERROR, ConfigError, UserError
from ma2ml_jax.spaces import make_pipeline_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Names out of alphabetical order: the decision order must be the user's, not ConfigDict's sorted.
SPACE = {"model": {"depth": [2, 4, 8], "act": ["relu", "gelu"], "dropout": (0.0, 0.1, 0.5)},
         "optimizer": {"lr": [1e-3, 1e-2, 0.1], "nesterov": [True, False],
                       "schedule": ["cosine", None]}}


def objective(pipelines):
    return [p["optimizer"]["lr"] * p["model"]["depth"] + (p["model"]["act"] == "gelu")
            - p["model"]["dropout"] + 0.01 * p["optimizer"]["nesterov"]
            + 0.001 * (p["optimizer"]["schedule"] is None) for p in pipelines]


def _config(iterations=2, pipelines=4, algorithm="random", seed=0):
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.iterations = iterations
    c.search.pipelines = pipelines
    c.seed = seed
    return c


def _as_config_spaces(space):
    return {a: {"kind": "choices", "decisions": d} for a, d in space.items()}


def _log(workdir):
    """The trial log without wall times (the only entries that differ between equal runs)."""
    with open(os.path.join(workdir, search.TRIALS)) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


# ------------------------------------------------------------------------------- the space
def test_decode_encode_round_trip_by_name_over_every_candidate():
    space = spaces.choices_space(SPACE["model"])
    assert [d.name for d in space.decisions] == ["depth", "act", "dropout"]
    assert space.sizes.tolist() == [3, 2, 3] and space.name == "choices"
    seen = set()
    for tokens in itertools.product(*(range(s) for s in space.sizes)):
        config = space.decode(np.array(tokens))
        assert list(config) == ["depth", "act", "dropout"]
        assert config == {n: SPACE["model"][n][t] for n, t in zip(config, tokens)}
        assert space.encode(config).tolist() == list(tokens)
        assert space.encode(json.loads(json.dumps(config))).tolist() == list(tokens)
        seen.add(json.dumps(config))
    assert len(seen) == 18


def test_json_scalars_round_trip_and_a_slash_nests():
    space = spaces.choices_space({"opt/lr": [np.float32(0.5), 1], "opt/name": ["a", None],
                                  "flag": [0, False, 1, True]})
    assert space.decode([0, 1, 3]) == {"opt": {"lr": 0.5, "name": None}, "flag": True}
    for tokens in itertools.product(range(2), range(2), range(4)):
        decoded = json.loads(json.dumps(space.decode(tokens)))
        assert space.encode(decoded).tolist() == list(tokens)


def test_the_config_keeps_lists_tuples_nested_configdicts_and_the_users_order():
    c = config_lib.base_config()
    c.spaces = {"model": {"kind": "choices", "decisions": {"depth": [2, 4, 8], "act": ("relu",)}}}
    c.spaces.optimizer = ml_collections.ConfigDict(
        {"kind": "choices", "decisions": ml_collections.ConfigDict({"lr": (0.1, 0.01), "b": [1]})})
    c.lock()
    config_lib.validate(c)
    for cfg in (c, ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))):
        space = make_pipeline_space(cfg.spaces)
        assert space.agents == ("model", "optimizer")
        assert [(d.name, d.choices) for d in space["model"].decisions] == [
            ("depth", (2, 4, 8)), ("act", ("relu",))]
        assert [(d.name, d.choices) for d in space["optimizer"].decisions] == [
            ("lr", (0.1, 0.01)), ("b", (1,))]


# ------------------------------------------------------------------------------- the search
def test_config_route_and_space_route_give_the_same_trial_log(tmp_path):
    c = _config(iterations=3)
    c.spaces = _as_config_spaces(SPACE)
    by_config = search.run(c, str(tmp_path / "config"), objective=objective, progress=False)
    by_dict = search.run(_config(iterations=3), str(tmp_path / "dict"), objective=objective,
                         space=SPACE, progress=False)
    by_space = search.run(_config(iterations=3), str(tmp_path / "space"), objective=objective,
                          space=spaces.choices_pipeline_space(SPACE), progress=False)
    log = _log(tmp_path / "config")
    assert log == _log(tmp_path / "dict") == _log(tmp_path / "space") and len(log) == 12
    for result in (by_config, by_dict, by_space):
        assert result.best_reward == max(t["reward"] for t in log)
    # Pipelines are {agent: {decision: value}} by name, scored by the objective.
    for t in log:
        assert {a: list(p) for a, p in t["pipeline"].items()} == {
            a: list(d) for a, d in SPACE.items()}
        assert t["reward"] == objective([t["pipeline"]])[0]
    # config.json records the space as choices kinds, decisions in the user's order.
    for name in ("config", "dict", "space"):
        with open(tmp_path / name / search.CONFIG) as f:
            saved = json.load(f)
        assert saved["spaces"] == json.loads(json.dumps(_as_config_spaces(SPACE)))
        assert list(saved["spaces"]["model"]["decisions"]) == ["depth", "act", "dropout"]
    # The caller's config is left as it was.
    assert set(_config().spaces) == {"aug", "nas", "hpo"}


def test_a_pipeline_space_of_other_spaces_is_recorded_as_choices(tmp_path):
    space = synthetic_space({"b": (3, 2), "a": (4,)})
    result = search.run(_config(), str(tmp_path), progress=False, space=space,
                        objective=lambda ps: [p["b"]["d0"] + p["a"]["d0"] for p in ps])
    assert result.space is space and result.best_pipeline.keys() == {"a", "b"}
    with open(tmp_path / search.CONFIG) as f:
        assert json.load(f)["spaces"] == {
            "b": {"kind": "choices", "decisions": {"d0": [0, 1, 2], "d1": [0, 1]}},
            "a": {"kind": "choices", "decisions": {"d0": [0, 1, 2, 3]}}}


def test_image_spaces_and_choices_mix_with_an_objective(tmp_path):
    c = _config(iterations=1)
    c.spaces.model = {"kind": "choices", "decisions": {"depth": [2, 4]}}
    result = search.run(c, str(tmp_path), progress=False, objective=lambda ps: [
        p["model"]["depth"] * p["hpo"]["learning_rate"] for p in ps])
    assert set(result.best_pipeline) == {"aug", "nas", "hpo", "model"}


@pytest.mark.parametrize("algorithm", config_lib.ALGORITHMS)
def test_every_searcher_runs_on_a_choices_space(tmp_path, algorithm):
    # qlearning too: off a layerwise space it learns the chain of every decision.
    result = search.run(_config(algorithm=algorithm), str(tmp_path), objective=objective,
                        space=SPACE, progress=False)
    assert len(result.trials) == 8
    for t in result.trials:
        assert result.space.decode({a: np.asarray(v) for a, v in t["tokens"].items()}) == \
            t["pipeline"]


def test_resume_equals_an_uninterrupted_run_and_refuses_another_space(tmp_path):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    search.run(_config(iterations=4, algorithm="lite"), full, objective=objective, space=SPACE,
               progress=False)
    search.run(_config(iterations=2, algorithm="lite"), resumed, objective=objective,
               space=SPACE, progress=False)
    result = search.run(_config(iterations=4, algorithm="lite"), resumed, objective=objective,
                        space=SPACE, progress=False)
    assert _log(resumed) == _log(full) and len(result.trials) == 16
    other = {**SPACE, "model": {**SPACE["model"], "depth": [2, 4, 16]}}
    with pytest.raises(ConfigError, match="another config .*spaces.model.decisions.depth"):
        search.run(_config(iterations=5, algorithm="lite"), resumed, objective=objective,
                   space=other, progress=False)
    reordered = {**SPACE, "model": dict(reversed(list(SPACE["model"].items())))}
    with pytest.raises(ConfigError, match="spaces.model.decisions \\(order\\)"):
        search.run(_config(iterations=5, algorithm="lite"), resumed, objective=objective,
                   space=reordered, progress=False)


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("decisions, message", [
    ({}, "decisions is empty"),
    ({"depth": []}, "decision 'depth' has no values"),
    ({"depth": [2, 4, 2]}, "decision 'depth' has repeated choices"),
    ({"lr": [1, 1.0]}, "decision 'lr' has repeated choices"),
    ({"depth": [[2, 3]]}, "decision 'depth': \\[2, 3\\] \\(list\\) is not a JSON scalar"),
    ({"depth": [2, {"a": 1}]}, "decision 'depth': {'a': 1} \\(dict\\) is not a JSON scalar"),
    ({"depth": [float("nan")]}, "decision 'depth': nan is not a finite number"),
    ({"depth": 3}, "decision 'depth' needs a list of values"),
    ({"act": "relu"}, "decision 'act' needs a list of values"),
])
@pytest.mark.parametrize("route", ["config", "space"])
def test_bad_decisions_are_config_errors(tmp_path, decisions, message, route):
    c = _config()
    kwargs = {"space": {"model": decisions}}
    if route == "config":
        c.spaces = _as_config_spaces({"model": decisions})
        kwargs = {}
    with pytest.raises(ConfigError, match=f"spaces.model: {message}"):
        search.run(c, str(tmp_path / "w"), objective=objective, progress=False, **kwargs)
    assert not (tmp_path / "w").exists()  # stopped before any work


@pytest.mark.parametrize("space, message", [
    ({}, "space=: space is empty"),
    ({"model": [2, 4]}, "space=: agent 'model': expected {decision: \\[values\\]}, got list"),
    ([("model", {})], "space=: a space is a PipelineSpace or a dict"),
])
def test_a_bad_space_argument_is_a_config_error(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        search.run(_config(), str(tmp_path), objective=objective, space=space, progress=False)


@pytest.mark.parametrize("route", ["config", "space", "mixed"])
def test_choices_without_an_objective_stop_before_any_work(tmp_path, route):
    c, kwargs = _config(), {}
    if route == "config":
        c.spaces = _as_config_spaces(SPACE)
    elif route == "space":
        kwargs = {"space": SPACE}
    else:
        c.spaces.model = {"kind": "choices", "decisions": {"depth": [2, 4]}}
    with pytest.raises(ConfigError, match="spaces of kind 'choices' \\((model, optimizer|model)\\) "
                                          "are scored by an objective: pass objective= to "
                                          "search.run"):
        search.run(c, str(tmp_path / "w"), progress=False, **kwargs)
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------- report, retrain
def test_report_reads_a_choices_workdir_and_retrain_refuses_it(tmp_path, capsys):
    w = str(tmp_path / "w")
    result = search.run(_config(), w, objective=objective, space=SPACE, progress=False)
    run = report.load_run(w)
    assert run.space is not None and [d.name for d in run.space["model"].decisions] == [
        "depth", "act", "dropout"]
    assert report.main([w, "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "summary.md") as f:
        text = f.read()
    assert f"reward **{result.best_reward:.4f}**" in text
    assert f"depth={result.best_pipeline['model']['depth']}" in text
    with pytest.raises(UserError, match="spaces model, optimizer are of kind 'choices'"):
        retrain.run(w)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        retrain.main([f"--workdir={w}"])
    assert e.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "objective" in err


# ------------------------------------------------------------------------------- README
def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The example of README.md "## Your own objective", verbatim but for 2 iterations."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Your own objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "space=space" in code and "config.search.iterations = 20" in code
    code = code.replace("config.search.iterations = 20", "config.search.iterations = 2")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result, space = namespace["result"], namespace["space"]
    assert len(result.trials) == 2 * 8
    for t in result.trials:
        assert {a: set(p) for a, p in t["pipeline"].items()} == {
            a: set(d) for a, d in space.items()}
        assert all(v in space[a][k] for a, p in t["pipeline"].items() for k, v in p.items())
        assert t["reward"] == namespace["objective"]([t["pipeline"]])[0]
    out = capsys.readouterr().out
    assert "Best pipeline of 16 evaluated" in out and "[model] choices" in out
    with open(tmp_path / "runs" / "objective" / search.CONFIG) as f:
        assert json.load(f)["spaces"]["model"] == {"kind": "choices",
                                                   "decisions": space["model"]}


def test_numeric_levels_in_monotonic_order_are_ordered_decisions():
    space = spaces.choices_space({"depth": [2, 4, 8], "lr": [0.1, 0.01, 0.001],
                                  "mixed": [4, 2, 8], "act": ["relu", "gelu"],
                                  "flag": [False, True], "one": [7]})
    assert space.ordered.tolist() == [True, True, False, False, False, False]
    # A space rebuilt from its values (config.json, a suite table) has the same flags.
    again = make_pipeline_space(ml_collections.ConfigDict(spaces.choices_spaces_config(
        spaces.PipelineSpace({"m": space}))))
    assert again["m"].ordered.tolist() == space.ordered.tolist()
