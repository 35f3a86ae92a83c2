"""The ImageNet-200 config's variants (the paper's two FLOPs constraints), the reward keys, and
which config section and settings each MA2ML searcher is built from."""

import pytest

from configs import imagenet200
from ma2ml_jax import config as config_lib
from ma2ml_jax import retrain
from ma2ml_jax.errors import ConfigError


@pytest.mark.parametrize("arg, target, budgets", [
    (None, 600e6, (500e6, 600e6, 700e6)),  # MA2ML-A/B/C
    ("flops900", 900e6, (800e6, 900e6, 1e9)),  # MA2ML-D/E/F
    ("local", 0.8e6, (0.8e6 * 5 / 6, 0.8e6, 0.8e6 * 7 / 6)),
    ("flops900:local", 1.2e6, (1.2e6 * 5 / 6, 1.2e6, 1.2e6 * 7 / 6)),
])
def test_imagenet200_variants_have_the_papers_targets_and_budgets(arg, target, budgets):
    c = imagenet200.get_config(arg)
    config_lib.validate(c)
    assert (c.reward.kind, c.reward.flops_target, c.reward.w) == ("mnas", target, -0.07)
    assert retrain.default_budgets(c) == pytest.approx(budgets)
    # FLOPs of the network as retrained on all of ImageNet, whatever data the proxy trains on.
    assert c.reward.flops_classes == 1000
    assert (c.data.source == "tfds:cifar10") == ("local" in (arg or ""))


def test_imagenet200_variants_differ_only_in_the_constraint():
    for local in ("", ":local"):
        a = imagenet200.get_config(local.lstrip(":") or None).to_dict()
        b = imagenet200.get_config("flops900" + local).to_dict()
        diff = {f"{s}.{k}" for s in a if isinstance(a[s], dict)
                for k in a[s] if a[s][k] != b[s][k]}
        assert diff <= {"reward.flops_target", "retrain.flops_budgets"}
    assert imagenet200.get_config("local:flops900") == imagenet200.get_config("flops900:local")


@pytest.mark.parametrize("arg", ["big", "flops600", "local:local", "flops900:flops900"])
def test_imagenet200_rejects_unknown_variants(arg):
    with pytest.raises(ValueError, match="takes no argument, 'local', 'flops900' or "):
        imagenet200.get_config(arg)


def test_negative_flops_classes_is_rejected():
    c = config_lib.base_config()
    c.reward.flops_classes = -1
    with pytest.raises(ConfigError, match=r"reward\.flops_classes=-1 must be >= 0"):
        config_lib.validate(c)


@pytest.mark.parametrize("algorithm, section, preset", [
    ("ma2ml", "ma2ml", "default"), ("ma2ml_paper", "ma2ml_paper", "paper"),
    ("ma2ml_onpolicy", "ma2ml_paper", "paper")])
def test_ma2ml_searchers_read_their_own_section(monkeypatch, algorithm, section, preset):
    """ma2ml reads `ma2ml.*` (the class defaults), ma2ml_paper and its on-policy ablation read
    `ma2ml_paper.*` (agents.ma2ml.PAPER); an override of the section read applies, one of the
    other section does not."""
    from ma2ml_jax import agents
    from ma2ml_jax.agents import ma2ml
    from ma2ml_jax.bench.objectives import make_objective

    built = []
    monkeypatch.setattr(ma2ml, "make_ma2ml", lambda space, p, config: built.append(config))
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    config_lib.validate(c)
    other = "ma2ml_paper" if section == "ma2ml" else "ma2ml"
    c[section].lam = 0.25
    c[other].tau = 0.5
    agents.make_searcher(c, make_objective({"aug": (2,), "nas": (3,)}, seed=0).space)
    start = ma2ml.MA2MLConfig() if preset == "default" else ma2ml.PAPER
    assert built == [start._replace(lam=0.25, on_policy=algorithm == "ma2ml_onpolicy")]
