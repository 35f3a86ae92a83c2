"""Rewards from a pipeline's metrics (the paper's Section 4.1 and Iranfar et al.'s equation 2).

  accuracy: R = Acc
  mnas:     R = Acc * (FLOPs / T)^w        (MnasNet; the paper: T = 600M or 900M, w = -0.07;
                                           classifier counted at `reward.flops_classes`)
  linear:   R = cA * Acc - cS * SizeMB     (Iranfar et al., SizeMB of float32 parameters)
  iranfar:  R = -1 if terminated, else cA * Acc% / N_epoch - cS * SizeMB   (Iranfar et al., eq. 2)
A failed pipeline (NaN loss, over a threshold, unbuildable) gets `reward.failure` whatever its
metrics; under "iranfar" it gets eq. 2's -1 (every failure is a termination).

"iranfar" is eq. 2 with Sec. VI-A's accuracy-like score: A_val in percent (the paper's rewards run
from -1 to 36, Fig. 9) divided by N_epoch, the episode's number of epochs needed to meet the loss
threshold (the metric "n_epoch" of `evaluate_layerwise`; 1 when absent, e.g. an objective's
metrics); cA + cS = 1 (checked by `config.validate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from ma2ml_jax.errors import ConfigError, choices

REWARDS = ("accuracy", "mnas", "linear", "iranfar")  # `reward.kind`


def make_reward_fn(config: ml_collections.ConfigDict) -> Callable[[Mapping[str, Any]], float]:
    """Returns `reward(metrics) -> float` for `config.reward`."""
    kind, failure = config.kind, float(config.failure)
    if kind == "accuracy":
        def value(m):
            return m["accuracy"]
    elif kind == "mnas":
        target, w = float(config.flops_target), float(config.w)

        def value(m):
            return m["accuracy"] * (max(m["flops"], 1.0) / target) ** w
    elif kind == "linear":
        ca, cs = float(config.acc_weight), float(config.size_weight)

        def value(m):
            return ca * m["accuracy"] - cs * m["params"] * 4 / 2**20
    elif kind == "iranfar":
        ca, cs = float(config.acc_weight), float(config.size_weight)
        failure = -1.0  # eq. 2: Termination = True

        def value(m):
            n_epoch = max(1, int(m.get("n_epoch") or 1))
            return ca * 100.0 * m["accuracy"] / n_epoch - cs * m.get("params", 0) * 4 / 2**20
    else:
        raise ConfigError(f"reward.kind={kind!r} is not one of {choices(REWARDS)}")

    def reward(metrics: Mapping[str, Any]) -> float:
        return failure if metrics.get("failure") else float(value(metrics))

    return reward
