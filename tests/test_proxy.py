import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import compilations

from ma2ml_jax import augment, data, proxy
from ma2ml_jax.models import MacroArch, MacroNet

ARCH = {"resolution": 8, "stem": {"width": 8, "stride": 1},
        "stages": [{"kernel": 3, "expansion": 1, "width": 8, "depth": 1, "stride": 1, "se": False},
                   {"kernel": 3, "expansion": 2, "width": 16, "depth": 2, "stride": 2, "se": True}],
        "head": {"width": 32}}
NO_POLICY = augment.Policy(jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)),
                           jnp.zeros((1, 2), jnp.int32))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", val_size=300, seed=0)


def _trainer(d, total=40):
    net = MacroNet(MacroArch.from_config(ARCH), d.num_classes)
    return proxy.make_trainer(net, image_shape=d.image_shape, num_classes=10,
                              mean=d.mean, std=d.std, total_steps=total, augment_images=False)


def test_learning_rate_schedule_by_hand():
    hp = proxy.Hyperparams.from_recipe({"learning_rate": 0.4, "warmup_epochs": 1}, 4)
    lr = lambda s: float(proxy.learning_rate(hp, jnp.int32(s), 20))  # noqa: E731
    assert lr(0) == pytest.approx(0.1)  # warm-up (step + 1) / 4
    assert lr(3) == pytest.approx(0.4)  # end of warm-up, start of cosine
    assert lr(12) == pytest.approx(0.4 * 0.5 * (1 + np.cos(np.pi * 8 / 16)))
    assert lr(20) == pytest.approx(0.0, abs=1e-7)


def test_phase_schedule_recipe_by_hand():
    # The paper's CIFAR recipe: one learning rate and weight decay per tenth of training.
    lrs = [0.025, 0.05, 0.1, 0.2, 0.2, 0.1, 0.05, 0.025, 0.025, 0.025]
    wds = [1e-4] * 5 + [1e-3] * 5
    hp = proxy.Hyperparams.from_recipe({"learning_rate_schedule": lrs,
                                        "weight_decay_schedule": wds}, 10)
    total = 50  # 5 steps a phase
    for step in (0, 4, 5, 17, 49):
        assert float(proxy.learning_rate(hp, jnp.int32(step), total)) == pytest.approx(
            lrs[step // 5])
        assert float(proxy.weight_decay(hp, jnp.int32(step), total)) == pytest.approx(
            wds[step // 5])


def test_training_learns_digits_and_new_recipe_does_not_recompile(digits):
    t = _trainer(digits)
    step = jax.jit(t.train_step)
    state = jax.jit(t.init)(jax.random.key(0))
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    recipes = [{"learning_rate": 0.1, "weight_decay": 1e-4},
               {"optimizer": 2, "learning_rate": 0.003, "weight_decay": 0.0,
                "label_smoothing": 0.1, "mixup": 0.2, "dropout": 0.1, "stochastic_depth": 0.1}]
    losses, compiled = [], []
    for r, recipe in enumerate(recipes):
        hp = proxy.Hyperparams.from_recipe(recipe, 10)
        s = state
        with compilations() as programs:
            for i in range(40):
                idx = (np.arange(64) + 64 * i) % len(y)
                s, loss = step(s, x[idx], y[idx], hp, NO_POLICY, jax.random.key(i))
                losses.append(float(loss))
        compiled.append(programs.count("jit(train_step)"))
        if r == 0:
            trained = s
    assert compiled == [1, 0]  # the second recipe (another optimizer) reused the program
    assert np.mean(losses[30:40]) < 0.7 * np.mean(losses[:5])
    correct = jax.jit(t.eval_batch)(trained, jnp.asarray(digits.x_val), jnp.asarray(digits.y_val),
                                    jnp.ones(300, bool), 0.0)
    assert int(correct) / 300 > 0.6


def test_the_recipe_picks_the_optimizer(digits):
    # One program holds every optimizer type. First steps worked out by hand from the same
    # gradient g: SGD (Nesterov, momentum 0.9) moves -lr * 1.9 * (g + wd * p); AdamW moves
    # -lr * (sign(g) + wd * p) (bias-corrected m / sqrt(v) = g / |g|); RMSProp differs from both.
    t = _trainer(digits)
    state = jax.jit(t.init)(jax.random.key(0))
    x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])
    step = jax.jit(t.train_step)
    lr, wd = 0.01, 1e-4
    delta = {}
    with compilations() as programs:
        for index, kind in enumerate(proxy.OPTIMIZERS):
            hp = proxy.Hyperparams.from_recipe({"optimizer": index, "learning_rate": lr,
                                                "weight_decay": wd}, 10)
            new, loss = step(state, x, y, hp, NO_POLICY, jax.random.key(1))
            assert np.isfinite(float(loss)) and int(new.step) == 1
            delta[kind] = new.params["classifier"]["kernel"] - state.params["classifier"]["kernel"]
    assert programs.count("jit(train_step)") == 1
    p = state.params["classifier"]["kernel"]
    # The schedule's first step: cosine at progress 0 and no warm-up, so the rate is lr.
    g = -delta["sgd"] / (1.9 * lr) - wd * p
    big = jnp.abs(g) > 1e-4
    want = -lr * (jnp.sign(g) + wd * p)
    np.testing.assert_allclose(np.asarray(delta["adamw"])[big], np.asarray(want)[big], rtol=1e-3,
                               atol=1e-6)
    assert not np.allclose(delta["rmsprop"], delta["sgd"])
    assert not np.allclose(delta["rmsprop"], delta["adamw"])


def test_eval_counts_only_valid_examples(digits):
    t = _trainer(digits)
    state = t.init(jax.random.key(0))
    x, y = jnp.asarray(digits.x_val[:16]), jnp.asarray(digits.y_val[:16])
    all_valid = int(t.eval_batch(state, x, y, jnp.ones(16, bool), 0.0))
    none_valid = int(t.eval_batch(state, x, y, jnp.zeros(16, bool), 0.0))
    assert none_valid == 0 and 0 <= all_valid <= 16


def test_macro_net_shapes_and_residuals():
    arch = MacroArch.from_config(ARCH)
    net = MacroNet(arch, 10)
    x = jnp.ones((2, 8, 8, 1))
    variables = net.init(jax.random.key(0), x, train=False)
    assert net.apply(variables, x, False).shape == (2, 10)
    # Images of another size are resized to the architecture's resolution.
    assert net.apply(variables, jnp.ones((2, 12, 12, 1)), False).shape == (2, 10)
    params = variables["params"]
    assert "expand" not in params["stage0_block0"]  # expansion 1: no 1x1 expand conv
    assert params["stage1_block0"]["depthwise"]["kernel"].shape == (3, 3, 1, 16)
    assert "se" in params["stage1_block1"]
    assert params["classifier"]["kernel"].shape == (32, 10)


def test_drop_path_rate_zero_is_identity_and_one_drops_all():
    x = jnp.ones((8, 2, 2, 3))
    from ma2ml_jax.models.layers import drop_path
    np.testing.assert_array_equal(drop_path(x, jnp.float32(0.0), jax.random.key(0)), x)
    np.testing.assert_array_equal(drop_path(x, jnp.float32(1.0), jax.random.key(0)), 0 * x)
