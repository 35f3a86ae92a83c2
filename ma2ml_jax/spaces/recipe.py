"""Training-recipe (HPO) space: the HPO agent's action (MA2ML Sec. 3.1, 4.1 and 4.2 Settings).

Variants:

* ``"imagenet"``: FBNetV3-style recipe (Dai et al. 2021, Table 1 searches optimizer type, initial
  learning rate, weight decay, mixup ratio, dropout ratio, stochastic-depth drop ratio and EMA):
  optimizer {sgd (momentum), rmsprop, adamw} (FBNetV3: RMSProp, SGD; AdamW added), learning rate
  (16 values, 5e-4 .. 0.8, covering AdamW's, RMSProp's and SGD's usual ranges), weight decay
  (15 values, 0 .. 5e-2; FBNetV3's 7e-6 .. 2.1e-5 for RMSProp sits inside), mixup 0 .. 0.4 step
  0.05, dropout 0 .. 0.35 step 0.05, stochastic depth 0 .. 0.3 step 0.05, EMA on/off, warm-up
  {0, 1, 2, 3, 5} epochs. 3,628,800 candidates: log10 = 6.56, the paper's 10^7.
* ``"cifar"``: the paper's CIFAR setting: SGD, fixed batch size, and "warmup learning rate and
  weight decay ... discretize[d] into 4 concrete values and use 10 steps to determine them". Read
  here as 10 decisions of 4 values for each of the two: training is cut into 10 equal phases and
  phase i uses ``learning_rate_schedule[i]`` in {0.025, 0.05, 0.1, 0.2} and
  ``weight_decay_schedule[i]`` in {1e-4, 3e-4, 5e-4, 1e-3} (piecewise-constant schedules; a low
  learning rate in the first phases is the warm-up). 4^20 candidates: log10 = 12.04, the paper's
  10^12. (One decision per hyper-parameter would give 16 candidates; 10 decisions in all, 4^10 ~
  10^6; only 20 four-way decisions reproduce 10^12.)
* ``"tiny"``: a small CPU recipe for a tiny CNN trained for a few epochs on 8x8 digits: optimizer
  {sgd, adamw}, learning rate {1e-3 .. 0.3}, weight decay, label smoothing, mixup, dropout, EMA,
  warm-up epochs. 1,536 candidates (log10 = 3.19).

Every numeric hyper-parameter (learning rates, weight decays, mixup, dropout, stochastic depth,
label smoothing, warm-up epochs) is an `ordered` decision; the optimizer and EMA are not.

`to_hparams` flattens a decoded recipe into the numbers a trainer puts into arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ma2ml_jax.spaces.base import Decision, Space

# Token order of the optimizer index in `to_hparams` (matches `proxy.OPTIMIZERS`).
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULE_PHASES = 10  # cifar: decisions per hyper-parameter ("10 steps")


def _level(name: str, choices: tuple) -> Decision:
    """An ordered decision: levels of one numeric hyper-parameter."""
    return Decision(name, choices, ordered=True)


_IMAGENET = (
    Decision("optimizer", OPTIMIZERS),
    _level("learning_rate", (5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 8e-3, 0.01, 0.016, 0.02, 0.03, 0.05,
                             0.064, 0.1, 0.2, 0.4, 0.8)),
    _level("weight_decay", (0.0, 1e-6, 3e-6, 7e-6, 1e-5, 1.5e-5, 2e-5, 4e-5, 5e-5, 1e-4, 2e-4,
                            5e-4, 1e-3, 1e-2, 5e-2)),
    _level("mixup", (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)),
    _level("dropout", (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)),
    _level("stochastic_depth", (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)),
    Decision("ema", (False, True)),
    _level("warmup_epochs", (0, 1, 2, 3, 5)),
)

_CIFAR = (
    (Decision("optimizer", ("sgd",)),)
    + tuple(_level(f"learning_rate_schedule/{i}", (0.025, 0.05, 0.1, 0.2))
            for i in range(SCHEDULE_PHASES))
    + tuple(_level(f"weight_decay_schedule/{i}", (1e-4, 3e-4, 5e-4, 1e-3))
            for i in range(SCHEDULE_PHASES))
)

_TINY = (
    Decision("optimizer", ("sgd", "adamw")),
    _level("learning_rate", (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)),
    _level("weight_decay", (0.0, 1e-4, 5e-4, 5e-3)),
    _level("label_smoothing", (0.0, 0.1)),
    _level("mixup", (0.0, 0.2)),
    _level("dropout", (0.0, 0.1)),
    Decision("ema", (False, True)),
    _level("warmup_epochs", (0, 1)),
)

VARIANTS = {"imagenet": _IMAGENET, "cifar": _CIFAR, "tiny": _TINY}

# Values of hyper-parameters a variant does not search (neutral: off).
DEFAULTS: dict[str, float | int] = {
    "optimizer": 0, "learning_rate": 0.1, "weight_decay": 0.0, "mixup": 0.0, "dropout": 0.0,
    "stochastic_depth": 0.0, "ema": 0, "warmup_epochs": 0, "label_smoothing": 0.0,
}


def recipe_space(variant: str) -> Space:
    """The training-recipe space of one variant ("imagenet", "cifar" or "tiny").

    Returns:
      A `Space` named "recipe"; decoded config: a flat dict of the searched hyper-parameters
      (cifar: "optimizer" and two lists of `SCHEDULE_PHASES` values).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown recipe variant {variant!r}; valid: {sorted(VARIANTS)}")
    return Space("recipe", VARIANTS[variant])


def to_hparams(space: Space, config: Any) -> dict[str, Any]:
    """A decoded recipe -> flat numeric hyper-parameters.

    Args:
      space: a space built by `recipe_space`.
      config: its decoded config (or its int[n_decisions] tokens, decoded here).

    Returns:
      {"optimizer": int (0 sgd, 1 rmsprop, 2 adamw), "learning_rate": float,
      "weight_decay": float, "mixup": float, "dropout": float, "stochastic_depth": float,
      "ema": 0 | 1, "warmup_epochs": int, "label_smoothing": float}, with `DEFAULTS` for what the
      variant does not search. The cifar variant adds "learning_rate_schedule" and
      "weight_decay_schedule", tuples of `SCHEDULE_PHASES` floats: phase i covers training steps
      [i T / 10, (i + 1) T / 10) of T; a trainer that honours them uses them as piecewise-constant
      schedules, one that does not falls back to "learning_rate" (the schedule's peak, with the
      trainer's own decay) and "weight_decay" (the schedule's mean).
    """
    if space.name != "recipe":
        raise ValueError(f"to_hparams needs a recipe space, got {space!r}")
    if not isinstance(config, Mapping):
        config = space.decode(config)
    names = {d.name.split("/")[0] for d in space.decisions}
    out: dict[str, Any] = dict(DEFAULTS)
    for key in names:
        value = config[key]
        if key == "optimizer":
            out[key] = OPTIMIZERS.index(value)
        elif key in ("learning_rate_schedule", "weight_decay_schedule"):
            out[key] = tuple(float(v) for v in value)
        elif key in ("ema", "warmup_epochs"):
            out[key] = int(value)
        else:
            out[key] = float(value)
    if "learning_rate_schedule" in out:
        out["learning_rate"] = max(out["learning_rate_schedule"])
    if "weight_decay_schedule" in out:
        wd = out["weight_decay_schedule"]
        out["weight_decay"] = sum(wd) / len(wd)
    return out
