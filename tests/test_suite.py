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
