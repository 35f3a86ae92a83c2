import math

import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import rewards
from ma2ml_jax.errors import ConfigError


def _reward_config(**kw):
    c = config_lib.base_config().reward
    c.update(kw)
    return c


def test_accuracy_reward():
    fn = rewards.make_reward_fn(_reward_config(kind="accuracy"))
    assert fn({"accuracy": 0.75, "flops": 1e6, "params": 10}) == 0.75


def test_mnas_reward_worked_example():
    # Acc 0.8 at twice the constraint with w = -0.07: 0.8 * 2 ** -0.07
    fn = rewards.make_reward_fn(_reward_config(kind="mnas", flops_target=600e6, w=-0.07))
    assert math.isclose(fn({"accuracy": 0.8, "flops": 1200e6}), 0.8 * 2 ** -0.07)
    assert math.isclose(fn({"accuracy": 0.8, "flops": 600e6}), 0.8)
    # a smaller network is rewarded: (1/2)^-0.07 > 1
    assert fn({"accuracy": 0.8, "flops": 300e6}) > 0.8


def test_linear_reward_uses_model_size_in_mb():
    fn = rewards.make_reward_fn(_reward_config(kind="linear", acc_weight=2.0, size_weight=0.5))
    params = 2**20 // 4  # 1 MB of float32
    assert math.isclose(fn({"accuracy": 0.5, "params": params}), 2.0 * 0.5 - 0.5 * 1.0)


def test_failure_gets_penalty_whatever_the_metrics():
    fn = rewards.make_reward_fn(_reward_config(kind="accuracy", failure=-1.0))
    assert fn({"accuracy": 0.9, "failure": "nan_loss in epoch 1"}) == -1.0


def test_unknown_reward_kind():
    with pytest.raises(ConfigError, match="reward.kind='top5' is not one of"):
        rewards.make_reward_fn(_reward_config(kind="top5"))
