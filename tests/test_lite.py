"""MA2ML-Lite: independent REINFORCE with an EMA reward baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax.agents.lite import LiteConfig, make_lite
from ma2ml_jax.bench.objectives import make_objective

OBJ = make_objective({"aug": (3, 4), "nas": (2, 5)}, seed=3)


def test_first_update_is_the_reinforce_gradient():
    """Adam's first step is -lr * sign(g); g computed here in numpy from the REINFORCE formula
    -mean_b adv_b (onehot(a_b) - pi) with a uniform policy and adv = (R - mean R) / std R."""
    lr = 0.05
    s = make_lite(OBJ.space, 6, LiteConfig(lr=lr))
    state = s.init(jax.random.key(0))
    actions, state = s.ask(state, jax.random.key(1))
    rewards = np.asarray([0.1, 0.9, 0.4, 0.4, 0.0, 0.7], np.float32)
    new, metrics = s.tell(state, actions, rewards)
    adv = (rewards - rewards.mean()) / rewards.std()
    for a in OBJ.agents:
        sizes = OBJ.space[a].sizes
        a_np = np.asarray(actions[a])
        width = new.policy[a]["logits"].shape[1]
        for d, n in enumerate(sizes):
            onehot = np.eye(width)[a_np[:, d]][:, :n]
            g = -(adv[:, None] * (onehot - 1.0 / n)).mean(0)
            step = np.asarray(new.policy[a]["logits"][d, :n] - state.policy[a]["logits"][d, :n])
            big = np.abs(g) > 1e-4
            np.testing.assert_allclose(step[big], -lr * np.sign(g[big]), rtol=1e-3)
    assert float(metrics["baseline"]) == pytest.approx(rewards.mean(), abs=1e-6)


def test_baseline_is_an_exponential_moving_average():
    s = make_lite(OBJ.space, 4, LiteConfig(baseline_decay=0.8))
    state = s.init(jax.random.key(0))
    means = []
    for it, r in enumerate([[0.0, 0.2, 0.4, 0.2], [1.0, 1.0, 0.6, 0.6], [0.5] * 4]):
        actions, state = s.ask(state, jax.random.key(it))
        state, _ = s.tell(state, actions, jnp.asarray(r))
        means.append(np.mean(r))
    expect = means[0]  # the first batch's mean, then b <- 0.8 b + 0.2 mean(R)
    for m in means[1:]:
        expect = 0.8 * expect + 0.2 * m
    assert float(state.baseline) == pytest.approx(expect, abs=1e-6)


def test_lite_raises_the_mean_reward():
    s = make_lite(OBJ.space, 16, LiteConfig(policy="autoregressive", hidden=8, lr=0.1))
    state = s.init(jax.random.key(0))
    means = []
    for it in range(25):
        actions, state = s.ask(state, jax.random.key(it))
        r = OBJ.true_reward(actions)
        means.append(float(r.mean()))
        state, _ = s.tell(state, actions, r)
    assert np.mean(means[-5:]) > np.mean(means[:5]) + 0.2, means


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="baseline_decay"):
        make_lite(OBJ.space, 4, LiteConfig(baseline_decay=1.0))
    with pytest.raises(ValueError, match="policy"):
        make_lite(OBJ.space, 4, LiteConfig(policy="lstm"))


def test_padded_rows_do_not_count():
    """Told 5 rows with P = 4 (padded to 8 inside): the statistics see exactly the 5."""
    s = make_lite(OBJ.space, 4)
    state = s.init(jax.random.key(0))
    actions, state = s.ask(state, jax.random.key(1))
    actions = {a: jnp.concatenate([x, x[:1]]) for a, x in actions.items()}
    r = jnp.asarray([0.1, 0.2, 0.3, 0.4, 1.0])
    state, metrics = s.tell(state, actions, r)
    assert float(state.stats.count) == 5
    assert float(metrics["mean_reward"]) == pytest.approx(0.4, abs=1e-6)


def test_class_defaults_are_the_config_defaults():
    from ma2ml_jax import config as config_lib

    assert dict(config_lib.base_config().lite) == LiteConfig()._asdict()
