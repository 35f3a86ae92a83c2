"""The real-problem suite on a tiny generated stand-in: file checks, tabulation, lookups, the
threshold rule, and the sample-efficiency benchmark driven over it.
"""

import itertools
import json
import os
import subprocess

import numpy as np
import pytest

from ma2ml_jax.bench import suite
from ma2ml_jax.spaces import choices_pipeline_space


def test_git_blob_id_matches_git(tmp_path):
    content = b"{\"0000\": 1}\n"
    path = tmp_path / "f.json"
    path.write_bytes(content)
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert suite.git_blob_id(content) == expected


def _nb_macro_stand_in(cache):
    """NAS-Bench-Macro's JSON format, every one of the 3^8 architectures, made-up accuracies:
    90 + 0.1 * (sum of the digits) + 0.01 * (first digit), so the optimum is '22222222'.
    """
    data = {}
    for digits in itertools.product("012", repeat=8):
        arch = "".join(digits)
        acc = 90 + 0.1 * sum(map(int, arch)) + 0.01 * int(arch[0])
        data[arch] = {"test_acc": [acc] * 3, "mean_acc": acc, "std": 0.0, "params": 1,
                      "flops": 1}
    path = os.path.join(cache, suite.SOURCES["nb_macro"].local)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(data, f)


def test_table_problem_from_a_stand_in(tmp_path):
    cache = str(tmp_path)
    with pytest.raises(suite.SuiteError, match="fetch"):
        suite.prepare(cache, ["nb_macro"])
    _nb_macro_stand_in(cache)
    suite.prepare(cache, ["nb_macro"], log=lambda _: None)
    o = suite.load("nb_macro", cache)
    assert o.space.agents == ("stage1", "stage2", "stage3")
    assert [o.space[a].n_decisions for a in o.space.agents] == [2, 3, 3]
    assert len(o.values) == 6561 and o.optimum == pytest.approx(0.9162)
    # A pipeline's tokens address its own architecture: '02012100' -> 90 + 0.6 + 0.0 = 90.6%.
    tokens = {"stage1": np.array([[0, 2]]), "stage2": np.array([[0, 1, 2]]),
              "stage3": np.array([[1, 0, 0]])}
    assert o.true_reward(tokens) == pytest.approx([0.906])
    assert o.space.decode(tokens, 0)["stage1"] == {"layer0": "identity", "layer1": "mb6_k5"}
    # Threshold: within 0.005 of the optimum AND among the best 0.1% (7 of 6561): stricter here.
    assert o.threshold() == pytest.approx(np.sort(o.values)[-7])
    assert (o.values >= o.threshold()).sum() >= 7


def test_missing_table_names_the_commands(tmp_path):
    with pytest.raises(suite.SuiteError, match="bench.suite fetch"):
        suite.load("channel_resnet", str(tmp_path))


def test_fetch_rejects_a_file_that_is_not_the_pinned_version(tmp_path):
    repo = tmp_path / "src" / "NAS-Bench-Macro"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "nas-bench-macro_cifar10.json").write_text("{}")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    with pytest.raises(suite.SuiteError, match="cannot read|not the pinned"):
        suite.fetch(str(tmp_path / "cache"), from_git=str(tmp_path / "src"), log=lambda _: None)


def test_yahpo_table_feeds_the_surrogate_its_inputs_in_table_order():
    grid = {"m": {"booster": ("lin", "tree"), "rounds": (10, 100)},
            "r": {"depth": (2, 8), "impute": ("mean", "hist")}}
    encoding = {"task": {"7": 5}, "booster": {"lin": 1, "tree": 2},
                "impute": {"mean": 3, "hist": 4}}
    seen = []

    def predict(x_cat, x_cont):
        seen.append((x_cat.copy(), x_cont.copy()))
        return np.stack([x_cont[:, 0] + x_cont[:, 1] + 1000 * x_cat[:, 1] + 0 * x_cat[:, 0],
                         np.zeros(len(x_cat))], 1)

    values = suite.yahpo_table(
        predict, encoding, grid, ("rounds", "depth", "trainsize", "repl"),
        lambda c: [("task", "7"), ("booster", c["booster"]), ("impute", c["impute"])],
        lambda c, name: c["booster"] != "lin" if name == "depth" else np.ones(
            len(c["booster"]), bool), chunk=3)
    x_cat = np.concatenate([s[0] for s in seen])
    x_cont = np.concatenate([s[1] for s in seen])
    assert (x_cat[:, 0] == 5).all() and (x_cont[:, 2] == 1).all() and (x_cont[:, 3] == 10).all()
    # Row-major over (booster, rounds, depth, impute); depth is 0 (inactive) for "lin".
    assert values.tolist() == [
        1010, 1010, 1010, 1010, 1100, 1100, 1100, 1100,
        2012, 2012, 2018, 2018, 2102, 2102, 2108, 2108]
    space = suite.choices_pipeline_space(grid)
    o = suite.TableObjective(space, values)
    assert o.true_reward({"m": np.array([[1, 0]]), "r": np.array([[1, 0]])}) == [2018]


def test_sample_efficiency_over_a_suite_problem(tmp_path, capsys):
    from ma2ml_jax.bench import sample_efficiency as se

    cache = str(tmp_path / "cache")
    _nb_macro_stand_in(cache)
    suite.prepare(cache, ["nb_macro"], log=lambda _: None)
    se.main(["--suite=nb_macro", f"--cache={cache}", "--algorithms=random,local", "--seeds=2",
             "--budget_scale=0.1", f"--out={tmp_path}", "--no_timing"])
    out = capsys.readouterr().out
    assert "| nb_macro | local |" in out
    record = json.loads((tmp_path / "sample_efficiency.json").read_text())
    s = record["results"]["nb_macro"]["local"]
    assert s["budget"] == 40 and s["threshold"] == pytest.approx(np.sort(
        suite.load("nb_macro", cache).values)[-7])
    assert max(s["curve_median"]) <= 0.9162 + 1e-6


def _table(decisions, values, name):
    space = suite.choices_pipeline_space(decisions)
    return suite.TableObjective(space, np.asarray(values, np.float32), name)


def _two_parts():
    # Part a: 2 agents of 1 decision (2 x 3 values), accuracies in a narrow band; part b: 1 agent
    # of 2 decisions (2 x 2 values), a wide band. Medians 0.905 and 0.5.
    a = _table({"x": {"d0": (0, 1)}, "y": {"d1": (0, 1, 2)}},
               [0.90, 0.90, 0.91, 0.90, 0.91, 0.92], "a")
    b = _table({"z": {"e0": (0, 1), "e1": (0, 1)}}, [0.1, 0.5, 0.5, 0.9], "b")
    return a, b


def test_composite_concatenates_agents_and_decisions_with_part_prefixes():
    a, b = _two_parts()
    c = suite.make_composite({"pa": a, "pb": b}, "c")
    assert c.space.agents == ("pa/x", "pa/y", "pb/z")
    assert [c.space[g].n_decisions for g in c.space.agents] == [1, 1, 2]
    assert c.n_decisions == 4 and c.log10_size == pytest.approx(np.log10(6 * 4))
    assert c.space["pb/z"] is b.space["z"]
    with pytest.raises(ValueError, match="repeated"):
        suite.make_composite([("p", a), ("p", b)])


def test_composite_reward_is_the_mean_of_the_normalized_parts():
    a, b = _two_parts()
    c = suite.make_composite({"pa": a, "pb": b}, "c")
    # By hand: part a, median 0.905, optimum 0.92 (scale 0.015); part b, median 0.5, optimum 0.9.
    actions = {"pa/x": np.array([[1], [0], [0]]), "pa/y": np.array([[2], [0], [2]]),
               "pb/z": np.array([[1, 1], [0, 0], [0, 1]])}
    ra = (np.array([0.92, 0.90, 0.91]) - 0.905) / 0.015
    rb = (np.array([0.9, 0.1, 0.5]) - 0.5) / 0.4
    np.testing.assert_allclose(c.true_reward(actions), (ra + rb) / 2, rtol=1e-5)
    np.testing.assert_allclose(c.part_rewards(actions), [ra, rb], rtol=1e-5)
    np.testing.assert_allclose(c(actions, None), c.true_reward(actions))
    # The optimum: every part at its own optimum, exactly 1; and it is what the best pipeline gets.
    assert c.optimum == pytest.approx(1.0)
    assert c.true_reward(actions)[0] == pytest.approx(1.0)


def test_composite_threshold_averages_the_parts_normalized_thresholds():
    a, b = _two_parts()
    c = suite.make_composite({"pa": a, "pb": b}, "c")
    # Each part's rule keeps only its optimum here (best 0.1% of a tiny table): threshold 1.
    assert c.threshold() == pytest.approx(1.0)
    wide = _table({"w": {"v": tuple(range(2000))}}, np.linspace(0.0, 1.0, 2000), "w")
    c2 = suite.make_composite({"pa": a, "w": wide})
    # Part w's own rule: its best 0.1% (the best 2 of 2000) is stricter than 0.005 of 1.
    assert wide.threshold() == pytest.approx(1.0 - 1.0 / 1999)
    t_w = (wide.threshold() - np.median(wide.values)) / (1.0 - np.median(wide.values))
    assert c2.threshold() == pytest.approx((1.0 + t_w) / 2, rel=1e-5)
    assert c2.threshold() < c2.optimum


def test_composites_are_built_from_one_half_of_the_split():
    assert not set(suite.TUNING_PROBLEMS) & set(suite.REPORTING_PROBLEMS)
    assert set(suite.TUNING_PROBLEMS) | set(suite.REPORTING_PROBLEMS) == set(suite.PROBLEMS)
    for name in suite.TUNING_COMPOSITES:
        assert set(suite.COMPOSITES[name]) <= set(suite.TUNING_PROBLEMS)
    for name in suite.REPORTING_COMPOSITES:
        assert set(suite.COMPOSITES[name]) <= set(suite.REPORTING_PROBLEMS)
    assert set(suite.COMPOSITES) == set(suite.TUNING_COMPOSITES + suite.REPORTING_COMPOSITES)


def test_a_composite_loads_from_prepared_tables_and_runs_in_the_benchmark(tmp_path, capsys):
    from ma2ml_jax.bench import sample_efficiency as se

    cache = str(tmp_path / "cache")
    _nb_macro_stand_in(cache)
    suite.prepare(cache, ["nb_macro"], log=lambda _: None)
    a, _ = _two_parts()
    suite.save_table(suite.table_path(cache, "rpart_14"), a.space, a.values)
    composites = {**suite.COMPOSITES, "c": ("nb_macro", "rpart_14")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(suite, "COMPOSITES", composites)
        c = suite.load("c", cache)
        assert c.space.agents == ("nb_macro/stage1", "nb_macro/stage2", "nb_macro/stage3",
                                  "rpart_14/x", "rpart_14/y")
        se.main(["--suite=c", f"--cache={cache}", "--algorithms=local", "--seeds=1",
                 "--budget_scale=0.1", f"--out={tmp_path}", "--no_timing"])
    assert "| c | local |" in capsys.readouterr().out
    s = json.loads((tmp_path / "sample_efficiency.json").read_text())["results"]["c"]["local"]
    assert s["threshold"] == pytest.approx(c.threshold(), rel=1e-6)
    assert max(s["curve_median"]) <= 1.0 + 1e-6


def test_frozen_row_and_paper_size_suites_in_the_benchmark():
    from ma2ml_jax.bench import sample_efficiency as se

    name, overrides, avoid = se.ALGORITHMS["ma2ml_frozen"]
    assert (name, avoid) == se.ALGORITHMS["ma2ml"][::2]
    assert overrides == {**se.ALGORITHMS["ma2ml"][1], "ma2ml.actor_lr": 1e-9}
    assert se.REAL_PROBLEMS == suite.TUNING_PROBLEMS
    composites, cooperative = se.PAPER_SIZE["paper_size"]
    assert composites == suite.REPORTING_COMPOSITES and cooperative == "large"
    assert se.PAPER_SIZE["paper_size_tuning"][0] == suite.TUNING_COMPOSITES


def test_iaml_glmnet_accuracy_is_one_minus_the_surrogates_error(monkeypatch):
    seen = []

    def predict(x_cat, x_cont):  # mmce = alpha / 10 + s / 1e4; other outputs made up
        seen.append(x_cat.copy())
        return np.stack([x_cont[:, 0] / 10 + x_cont[:, 1] / 1e4, np.ones(len(x_cat))], 1)

    monkeypatch.setattr(suite, "_surrogate",
                        lambda cache, scenario: (predict, {"task_id": {"1489": 2}}))
    space, values = suite.PROBLEMS["iaml_glmnet_1489"].build("unused")
    assert space.agents == ("mixing", "strength") and len(values) == 11 * 15
    assert (np.concatenate(seen) == 2).all()
    alpha = np.repeat(np.linspace(0, 1, 11), 15)
    s = np.tile(10.0 ** (np.arange(-8, 7) / 2), 11)
    np.testing.assert_allclose(values, 1 - (alpha / 10 + s / 1e4), rtol=1e-5)


def test_a_saved_table_keeps_its_ordered_levels(tmp_path):
    space = choices_pipeline_space({"tree": {"cp": [0.001, 0.01, 0.1], "kind": ["a", "b"]},
                                    "leaves": {"minbucket": [1, 3, 7]}})
    path = suite.table_path(str(tmp_path), "rpart_14")
    suite.save_table(path, space, np.arange(18, dtype=np.float32))
    loaded = suite.load("rpart_14", str(tmp_path)).space
    assert {a: loaded[a].ordered.tolist() for a in loaded.agents} == {
        "tree": [True, False], "leaves": [True]}
