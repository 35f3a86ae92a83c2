"""Pipelines trained together, sharded over 4 fake CPU devices, equal one-at-a-time training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import data, models, proxy, search, sharded
from ma2ml_jax.spaces import recipe, to_policy

STEPS, BATCH, PIPELINES = 2, 16, 2


class TinyMasked(nn.Module):
    """A minimal network with the masked-network call convention: `arch` masks its width."""

    @nn.compact
    def __call__(self, x, train=False, dropout=0.0, drop_path_rate=0.0, arch=None):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        x = x * (jnp.arange(8) < arch)
        return nn.Dense(10, name="classifier")(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def tiny():
    """Fast to compile: the sharding logic does not depend on the network."""
    d = data.load("digits", val_size=32, max_train=64)
    trainer = proxy.make_trainer(TinyMasked(), image_shape=d.image_shape, num_classes=10,
                                 mean=d.mean, std=d.std, total_steps=STEPS, augment_images=False)
    no_policy = to_policy_none()
    per = [(np.int32(w), proxy.Hyperparams.from_recipe(
        {"optimizer": o, "learning_rate": lr, "weight_decay": 1e-4}, 4), no_policy)
        for w, o, lr in ((5, 0, 0.1), (8, 2, 0.01))]
    return trainer, per, d


def to_policy_none():
    from ma2ml_jax import augment
    return augment.Policy(np.zeros((1, 2), np.int32), np.zeros((1, 2), np.float32),
                          np.zeros((1, 2), np.int32))


@pytest.fixture(scope="module")
def macro():
    c = config_lib.base_config()
    space = search.make_pipeline_space(c.spaces)
    d = data.load("digits", val_size=32, max_train=64)
    pipelines = [space.decode(space.sample(jax.random.key(s), 1), 0) for s in range(PIPELINES)]
    nets = [models.make_network_for("macro", space["nas"], p["nas"], 10, c.model, True)
            for p in pipelines]
    assert len({repr(n) for n, _ in nets}) == 1  # one shared max-size network
    # Without augmentation: the sharding does not depend on it, and it halves compile time.
    trainer = proxy.make_trainer(nets[0][0], image_shape=d.image_shape, num_classes=10,
                                 mean=d.mean, std=d.std, total_steps=STEPS, augment_images=False)
    per = [(a, proxy.Hyperparams.from_recipe(recipe.to_hparams(space["hpo"], p["hpo"]), 4),
            to_policy(space["aug"], np.asarray(space["aug"].encode(p["aug"]))))
           for p, (_, a) in zip(pipelines, nets)]
    return trainer, per, d


def _loop(trainer, per, d):
    """One pipeline at a time with the plain jitted functions: the reference."""
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    out = []
    for i, (arrays, hp, policy) in enumerate(per):
        state = jax.jit(trainer.init)(jax.random.key(i), arrays)
        for s in range(STEPS):
            idx = jnp.arange(s * BATCH, (s + 1) * BATCH)
            state, loss = jax.jit(trainer.train_step)(state, x[idx], y[idx], hp, policy,
                                                      jax.random.key(100 * i + s), arrays)
        correct = trainer.eval_batch(state, jnp.asarray(d.x_val), jnp.asarray(d.y_val),
                                     jnp.ones(len(d.y_val), bool), hp.ema, arrays)
        out.append((float(loss), int(correct), state.params["classifier"]["kernel"]))
    return out


def _sharded(trainer, per, d, strategy, devices):
    progs = sharded.make_programs(trainer, strategy, devices)
    n = progs.num_devices
    arrays, _ = sharded.stack([p[0] for p in per], n)
    hp, _ = sharded.stack([p[1] for p in per], n)
    policy, _ = sharded.stack([p[2] for p in per], n)
    keys, count = sharded.stack([jax.random.key_data(jax.random.key(i))
                                 for i in range(PIPELINES)], n)
    states = progs.init(jax.random.wrap_key_data(keys), arrays)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    for s in range(STEPS):
        step_keys, _ = sharded.stack([jax.random.key_data(jax.random.key(100 * i + s))
                                      for i in range(PIPELINES)], n)
        states, loss = progs.step(states, x, y, jnp.arange(s * BATCH, (s + 1) * BATCH), hp,
                                  policy, jax.random.wrap_key_data(step_keys), arrays)
    correct = progs.eval_batch(states, jnp.asarray(d.x_val), jnp.asarray(d.y_val),
                               jnp.ones(len(d.y_val), bool), hp.ema, arrays)
    assert count == PIPELINES and loss.shape[0] % n == 0
    loss, correct, kernel = jax.device_get((loss, correct,
                                            states.params["classifier"]["kernel"]))
    return [(float(loss[i]), int(correct[i]), kernel[i]) for i in range(PIPELINES)]


@pytest.mark.parametrize("strategy", sharded.STRATEGIES)
def test_four_devices_equal_one_device_and_the_loop(tiny, strategy):
    _check_equal(tiny, strategy)


@pytest.mark.slow  # the masked macro network: minutes of compilation on 2 CPU cores
@pytest.mark.parametrize("strategy", sharded.STRATEGIES)
def test_masked_macro_pipelines_sharded(macro, strategy):
    _check_equal(macro, strategy)


def _check_equal(setup, strategy):
    assert len(jax.devices()) == 4  # tests/conftest.py
    trainer, per, d = setup
    want = _loop(trainer, per, d)
    four = _sharded(trainer, per, d, strategy, jax.devices())
    one = _sharded(trainer, per, d, strategy, jax.devices()[:1])
    for got in (four, one):
        for (l1, c1, w1), (l2, c2, w2) in zip(got, want):
            assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
            assert abs(c1 - c2) <= 1  # an argmax tie can flip with float reassociation
            np.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # two full evaluator compiles (masked macro network + augmentation)
def test_evaluator_strategies_agree():
    from ma2ml_jax import evaluate
    c = config_lib.base_config()
    c.evaluate.epochs, c.evaluate.batch_size, c.data.max_train = 1, 32, 64
    space = search.make_pipeline_space(c.spaces)
    d = data.load("digits", val_size=64, max_train=64)
    actions = space.sample(jax.random.key(0), 3)
    pipelines = [space.decode(actions, i) for i in range(3)]
    results = {}
    for strategy in ("loop", "unrolled"):
        c.evaluate.strategy = strategy
        results[strategy] = evaluate.make_evaluator(c, d, space)(pipelines, jax.random.key(1))
    for a, b in zip(results["loop"], results["unrolled"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 64
        assert (a["flops"], a["params"], a["failure"]) == (b["flops"], b["params"], b["failure"])
