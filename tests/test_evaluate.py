"""The evaluator's strategy choice ("auto") and its config checks."""

import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import evaluate
from ma2ml_jax.errors import ConfigError


def test_pick_fastest_takes_the_least_time_and_logs_every_candidate():
    logged = []
    best = evaluate.pick_fastest({"loop": lambda: 0.3, "map": lambda: 0.1,
                                  "unrolled": lambda: 0.2}, logged.append, "a chunk")
    assert best == "map"
    assert len(logged) == 1
    assert all(s in logged[0] for s in ("loop 300 ms", "map 100 ms", "unrolled 200 ms",
                                        "using 'map'"))


def test_pick_fastest_skips_a_failing_candidate():
    def oom():
        raise MemoryError("out of memory")

    logged = []
    assert evaluate.pick_fastest({"vmap": oom, "loop": lambda: 1.0}, logged.append,
                                 "x") == "loop"
    assert "vmap failed (MemoryError: out of memory)" in logged[0]
    with pytest.raises(RuntimeError, match="every candidate"):
        evaluate.pick_fastest({"vmap": oom}, logged.append, "x")


@pytest.mark.parametrize("key, value, message", [
    ("strategy", "pmap", "evaluate.strategy='pmap' is not one of"),
    ("step_loop", "while", "evaluate.step_loop='while' is not one of"),
    ("steps_per_call", 0, "evaluate.steps_per_call=0 must be >= 1"),
    ("map_chunk", 0, "evaluate.map_chunk=0 must be >= 1"),
    ("time_budget", -1.0, "evaluate.time_budget=-1.0 must be >= 0"),
])
def test_bad_evaluation_settings_are_named(key, value, message):
    c = config_lib.base_config()
    c.evaluate[key] = value
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


@pytest.mark.parametrize("network, kind, backend, want", [
    ("auto", "macro", "cpu", "masked"), ("auto", "cell", "cpu", "exact"),
    ("auto", "cell", "gpu", "masked"), ("auto", "cell", "tpu", "masked"),
    ("masked", "cell", "cpu", "masked"),
    ("exact", "macro", "tpu", "exact"),
])
def test_resolve_network(network, kind, backend, want):
    assert evaluate.resolve_network(network, kind, backend) == want


def test_auto_candidates():
    assert evaluate.auto_candidates("cpu", 4) == ("loop",)
    assert evaluate.auto_candidates("gpu", 1) == ("loop", "unrolled", "vmap", "map")
    assert "loop" not in evaluate.auto_candidates("tpu", 8)


def test_a_pipeline_over_its_time_budget_fails_with_the_penalty(tmp_path):
    """Real training on digits, a budget no pipeline can meet: each is stopped after its second
    epoch (the first holds the compilation), logged with its reason and the failure reward, and
    the search goes on to the end. The same run (its compilation is the cost) checks that the
    logged FLOPs count a classifier of `reward.flops_classes` outputs, the parameters the
    10-class network trained."""
    from configs import default
    from ma2ml_jax import cost, search

    c = default.get_config("local")
    c.search.algorithm = "random"
    c.search.iterations, c.search.pipelines = 2, 2
    c.evaluate.epochs, c.data.max_train = 3, 128
    c.evaluate.time_budget = 1e-6
    c.reward.failure = -1.0
    c.reward.flops_classes = 1000
    result = search.run(c, str(tmp_path), progress=False)
    assert len(result.trials) == 4
    for t in result.trials:
        assert t["failure"].startswith("time_budget:") and "after epoch 2 of" in t["failure"]
        assert t["reward"] == -1.0
        arch = t["pipeline"]["nas"]
        trained = cost.count("macro", arch, 10, (8, 8, 1), c.model)
        assert t["params"] == trained.params
        assert t["flops"] - trained.flops == arch["head"]["width"] * (1000 - 10)
