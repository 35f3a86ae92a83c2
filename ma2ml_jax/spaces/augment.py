"""AutoAugment policy space: the AUG agent's action (MA2ML Sec. 3.1 and 4.1 Setting).

A policy is `num_subpolicies` sub-policies of two operations each; every operation is three
decisions, in this order:

* ``subpolicies/{i}/{j}/op``: one of `augment.OP_NAMES[:15]` (AutoAugment's 15 operations), or all
  16 with SamplePairing;
* ``subpolicies/{i}/{j}/prob``: probability 0.0, 0.1, ..., 1.0 (11 levels);
* ``subpolicies/{i}/{j}/magnitude``: level 0..9 (10 levels).

Probabilities and magnitudes are `ordered` decisions (levels of one quantity); operations are not.

Size: (15 x 11 x 10)^(2 N) candidates, log10 = 2 N log10(1650) = 6.435 N. The paper's ImageNet
count 10^160 is N = 25 (160.9); its CIFAR count 10^32 is N = 5 (32.2), the size of one policy
sampled by AutoAugment's controller (AutoAugment concatenates the 5 best 5-sub-policy policies into
the final 25). The CIFAR paragraph's "25 sub-policies" therefore describes the final policy, not
one action.

`to_policy` turns tokens into the `augment.Policy` arrays by index arithmetic only, so it runs
inside jit and vmap: a new policy never recompiles the training step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ma2ml_jax.augment import (
    NUM_MAGNITUDE_LEVELS,
    NUM_PAPER_OPS,
    NUM_PROB_LEVELS,
    OP_NAMES,
    Policy,
)
from ma2ml_jax.spaces.base import Decision, Space

OPS_PER_SUBPOLICY = 2
FIELDS = ("op", "prob", "magnitude")  # the decisions of one operation, in token order
ORDERED_FIELDS = ("prob", "magnitude")  # levels of one quantity (`Decision.ordered`)
PROB_LEVELS = tuple(round(i / (NUM_PROB_LEVELS - 1), 1) for i in range(NUM_PROB_LEVELS))
MAGNITUDE_LEVELS = tuple(range(NUM_MAGNITUDE_LEVELS))


def augment_space(num_subpolicies: int = 25, sample_pairing: bool = False) -> Space:
    """The AutoAugment policy space of `num_subpolicies` x 2 operations.

    Args:
      num_subpolicies: N, sub-policies in one action (25: the paper's ImageNet setting; 5: the
        10^32 count of its CIFAR setting).
      sample_pairing: also offer SamplePairing (16 operations instead of 15).

    Returns:
      A `Space` named "augment" with 6 N decisions; decoded config
      ``{"subpolicies": [[{"op": str, "prob": float, "magnitude": int}] x 2] x N}``.
    """
    if not isinstance(num_subpolicies, int) or isinstance(num_subpolicies, bool) \
            or num_subpolicies < 1:
        raise ValueError(f"num_subpolicies must be a positive int, got {num_subpolicies!r}")
    ops = tuple(OP_NAMES if sample_pairing else OP_NAMES[:NUM_PAPER_OPS])
    choices = {"op": ops, "prob": PROB_LEVELS, "magnitude": MAGNITUDE_LEVELS}
    decisions = [Decision(f"subpolicies/{i}/{j}/{field}", choices[field],
                          ordered=field in ORDERED_FIELDS)
                 for i in range(num_subpolicies)
                 for j in range(OPS_PER_SUBPOLICY)
                 for field in FIELDS]
    return Space("augment", decisions)


def count_subpolicies(space: Space) -> int:
    """N of an augment space; raises ValueError if `space` is not one `augment_space` builds."""
    n, rem = divmod(space.n_decisions, OPS_PER_SUBPOLICY * len(FIELDS))
    if space.name != "augment" or rem or n < 1:
        raise ValueError(f"not an augment space: {space!r}")
    for k, d in enumerate(space.decisions):
        i, rest = divmod(k, OPS_PER_SUBPOLICY * len(FIELDS))
        j, f = divmod(rest, len(FIELDS))
        expected = f"subpolicies/{i}/{j}/{FIELDS[f]}"
        if d.name != expected:
            raise ValueError(f"augment space decision {k} is {d.name!r}, expected {expected!r}")
        if FIELDS[f] == "op" and d.choices != tuple(OP_NAMES[:d.size]):
            raise ValueError(f"{d.name}: operations must be a prefix of augment.OP_NAMES")
        if FIELDS[f] == "prob" and d.choices != PROB_LEVELS:
            raise ValueError(f"{d.name}: probabilities must be {PROB_LEVELS}")
        if FIELDS[f] == "magnitude" and d.choices != MAGNITUDE_LEVELS:
            raise ValueError(f"{d.name}: magnitudes must be {MAGNITUDE_LEVELS}")
    return n


def to_policy(space: Space, tokens: jax.Array) -> Policy:
    """Tokens of an augment space -> the `augment.Policy` arrays (jit- and vmap-safe).

    Token t of an operation's op decision is `OP_NAMES[t]`, of its prob decision t / 10, of its
    magnitude decision level t; so the mapping is a reshape and a scale.

    Args:
      space: a space built by `augment_space` (its structure is checked once, in Python).
      tokens: int[..., n_decisions], any leading batch axes; may be a traced array.

    Returns:
      `Policy` with op int32[..., N, 2], prob float32[..., N, 2], level int32[..., N, 2].
    """
    n = count_subpolicies(space)
    tokens = jnp.asarray(tokens)
    if tokens.shape[-1:] != (space.n_decisions,):
        raise ValueError(f"augment: expected tokens [..., {space.n_decisions}], "
                         f"got shape {tokens.shape}")
    t = tokens.astype(jnp.int32).reshape(tokens.shape[:-1] + (n, OPS_PER_SUBPOLICY, len(FIELDS)))
    prob = t[..., 1].astype(jnp.float32) / jnp.float32(NUM_PROB_LEVELS - 1)
    return Policy(op=t[..., 0], prob=prob, level=t[..., 2])
