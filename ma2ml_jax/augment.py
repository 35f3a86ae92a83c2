"""AutoAugment operations in pure JAX, applied on the device inside the jitted training step.

Interface shared with `ma2ml_jax.spaces.augment` (the policy space) and the evaluator:
  * `OP_NAMES`: the operations, in token order.
  * `Policy`: an augmentation policy as arrays, so a new policy never recompiles.
  * `apply_policy(images, policy, key)`: augments a batch, one sub-policy drawn per image.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

# Token order of the operation decision. The first 15 are the paper's (AutoAugment's) operations;
# SamplePairing is the optional 16th.
OP_NAMES = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
    "Contrast", "Color", "Brightness", "Sharpness", "Cutout",
    "SamplePairing",
)
NUM_PAPER_OPS = 15
NUM_PROB_LEVELS = 11  # probability 0.0, 0.1, ..., 1.0
NUM_MAGNITUDE_LEVELS = 10  # magnitude level 0..9


class Policy(NamedTuple):
    """An augmentation policy of N sub-policies of 2 operations each.

    Attributes:
      op: int32[N, 2], index into `OP_NAMES`.
      prob: float32[N, 2], probability of applying each operation, in [0, 1].
      level: int32[N, 2], magnitude level in [0, NUM_MAGNITUDE_LEVELS).
    """

    op: jax.Array
    prob: jax.Array
    level: jax.Array
