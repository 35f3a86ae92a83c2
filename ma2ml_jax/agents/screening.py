"""Critic-screened proposals: many candidate pipelines, the few a critic ensemble rates best.

A policy-gradient learner that evaluates only its own samples uses each (costly) evaluation for a
few gradient steps. MA2ML already owns a model of the reward, the centralized critic Q(S, A) of
equation (11): used as a screen, it decides which of many cheap candidates are worth evaluating.

    candidates = policy samples  +  uniform samples  +  every one-decision neighbour of the best
                 pipelines evaluated so far (local moves; optionally one level up or down
                 for ordered decisions)
    score      = an acquisition over an ensemble of critics (independently initialized members,
                 each trained on its own bootstrap mini-batches): the mean plus `beta` standard
                 deviations (upper confidence bound), or one member per proposal (Thompson)
    proposals  = the P best distinct candidates that were never evaluated (uniform samples
                 fill in when fewer are new)

Every function here is pure and jittable; pipelines are joint actions {agent: int32[N, n_agent]}.
Identity of a pipeline is a pair of 32-bit hashes of its tokens (a collision needs two pipelines
equal in 64 random bits: about 1e-19 for a pair).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.spaces import PipelineSpace

ACQUISITIONS = ("ucb", "thompson")


def make_hash(space: PipelineSpace, seed: int = 0):
    """(actions {agent: int[..., n]}) -> (uint32[...], uint32[...]): two independent hashes."""
    flat = FlatSpace(space)
    n = flat.num_decisions
    rng = np.random.default_rng(seed)
    weights = jnp.asarray(rng.integers(1, 2**32, (2, n), dtype=np.uint64).astype(np.uint32) | 1)
    bias = jnp.asarray(rng.integers(1, 2**32, (2, n), dtype=np.uint64).astype(np.uint32))

    def pipeline_hash(actions):
        tokens = flat.flatten(actions).astype(jnp.uint32)
        # A multiply-xorshift per position, summed (mod 2^32): position-dependent and nonlinear,
        # so permuted or offset token vectors do not collide.
        x = (tokens[..., None, :] + 1) * weights + bias  # [..., 2, n]
        x = x ^ (x >> 15)
        x = x * jnp.uint32(0x2C1B3C6D)
        x = x ^ (x >> 12)
        h = x.sum(-1, dtype=jnp.uint32)
        return h[..., 0], h[..., 1]

    return pipeline_hash


def novel(cand: tuple[jax.Array, jax.Array], seen: tuple[jax.Array, jax.Array],
          seen_valid: jax.Array) -> jax.Array:
    """bool[C]: candidates never seen and first of their kind among the candidates.

    Args:
      cand: hashes (uint32[C], uint32[C]) of the candidates.
      seen: hashes (uint32[R], uint32[R]) of the pipelines evaluated so far.
      seen_valid: bool[R], which entries of `seen` are real (a replay's unused slots are not).
    """
    c, r = cand[0].shape[0], seen[0].shape[0]
    h1 = jnp.concatenate([seen[0], cand[0]])
    h2 = jnp.concatenate([seen[1], cand[1]])
    # Within one (h1, h2) group: valid seen entries first, then candidates, then unused slots.
    tag = jnp.concatenate([jnp.where(seen_valid, 0, 2), jnp.ones((c,), jnp.int32)])
    order = jnp.lexsort((tag, h2, h1))
    s1, s2, st = h1[order], h2[order], tag[order]
    new_group = jnp.concatenate([jnp.ones((1,), bool), (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])])
    position = jnp.arange(r + c)
    first = jax.lax.cummax(jnp.where(new_group, position, 0))
    # A candidate is kept when its group holds no evaluated pipeline and it is the group's first.
    keep_sorted = (st == 1) & (first == position)
    keep = jnp.zeros((r + c,), bool).at[order].set(keep_sorted)
    return keep[r:]


def neighbours(space: PipelineSpace, parents: Mapping[str, jax.Array],
               ordered_steps: bool = False) -> dict[str, jax.Array]:
    """Every one-decision neighbour of each parent: {agent: int32[M * K, n_agent]}, K =
    sum over decisions of (size - 1) (`agents.neighbourhood` numbers them); with
    `ordered_steps`, an ordered decision's neighbours are one level down and up only (a step
    past an end level repeats the parent, which `novel` then drops).
    """
    flat = FlatSpace(space, ordered_steps)
    x = flat.flatten(parents)  # [M, D]
    every = jax.vmap(lambda p: jax.vmap(lambda k: flat.neighbour(p, k))(
        jnp.arange(flat.num_neighbours)))(x)  # [M, K, D]
    return flat.unflatten(every.reshape(-1, flat.num_decisions))


def policy_mutants(flat: FlatSpace, parents: jax.Array, samples: jax.Array, key: jax.Array,
                   max_changes: int, allowed: jax.Array | None = None) -> jax.Array:
    """Multi-decision moves around the parents whose new values come from the policies.

    Mutant j of a parent takes every decision from the parent except a random subset, whose
    values it takes from `samples[j]` (joint samples of the agents' policies pi). The subset's
    size is drawn log-uniformly from 1 .. `max_changes` (decisions with one choice are never
    picked): small moves refine, larger ones jump several decisions at once along what the
    policies learned. With uniform policies these are uniform multi-decision mutations.

    Args:
      flat: the flattened space.
      parents: int32[M, D], the pipelines mutated.
      samples: int32[M * J, D], policy samples; mutant i of the M * J is parent i // J with a
        subset of decisions taken from samples[i].
      key: drives the subsets.
      max_changes: the largest subset.
      allowed: optional bool[M * J, D], the decisions each mutant may change (for instance one
        agent's); the subset is capped at their number.

    Returns:
      int32[M * J, D].
    """
    num, d = samples.shape
    m = parents.shape[0]
    k_size, k_order = jax.random.split(key)
    mutable = jnp.broadcast_to(jnp.asarray(flat.sizes) > 1, (num, d))
    if allowed is not None:
        mutable = mutable & allowed
    hi = max(1, min(max_changes, int(np.sum(flat.sizes > 1))))
    size = jnp.floor(jnp.exp(jax.random.uniform(k_size, (num,), maxval=np.log(hi + 1.0))))
    size = jnp.minimum(size, mutable.sum(1))
    # A random order of the mutable decisions per mutant: the first `size` of it change.
    noise = jnp.where(mutable, jax.random.uniform(k_order, (num, d)), 2.0)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    change = rank < size[:, None]
    base = jnp.repeat(parents, num // m, axis=0)
    return jnp.where(change, samples, base).astype(jnp.int32)


def other_values(logits: jax.Array, parents: jax.Array, key: jax.Array, per_parent: int
                 ) -> jax.Array:
    """Per decision of every parent, `per_parent` draws of a value other than the parent's.

    Args:
      logits: float32[M, n, max_size], one agent's policy logits at each parent (conditional on
        the parent's earlier decisions for an autoregressive policy); choices a decision lacks
        are masked (`agents.policy`).
      parents: int32[M, n], that agent's decisions of the parents.
      key: drives the draws.
      per_parent: J.

    Returns:
      int32[M * J, n]: row i for parent i // J, each value drawn with probability pi(v) /
      (1 - pi(parent's value)) among the others: a policy that has settled on the parent's value
      still ranks the alternatives. A decision with one choice has no other value; its entry is
      meaningless (`policy_mutants` never changes such a decision).
    """
    own = jax.nn.one_hot(parents, logits.shape[-1], dtype=bool)
    logits = jnp.repeat(jnp.where(own, -jnp.inf, logits), per_parent, axis=0)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def concat(*batches: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {a: jnp.concatenate([b[a] for b in batches]) for a in batches[0]}


def take(actions: Mapping[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
    return {a: x[index] for a, x in actions.items()}


def tiers(*masks: jax.Array) -> jax.Array:
    """int32[C]: for each candidate, the index of the first of `masks` (bool[C] each) that holds
    it, len(masks) when none does: the preference order of `select`.
    """
    tier = jnp.full(masks[0].shape, len(masks), jnp.int32)
    for i in reversed(range(len(masks))):
        tier = jnp.where(masks[i], i, tier)
    return tier


def select(scores: jax.Array, tier: jax.Array, num: int, acquisition: str, beta: float,
           key: jax.Array) -> jax.Array:
    """int32[num]: indices of distinct candidates to evaluate.

    Args:
      scores: float32[members, C], each member's predicted reward (in the critic's target
        units: standardized rewards or their ranks' normal scores).
      tier: int32[C], lower first (`tiers`): every pick is from the lowest tier that has a
        candidate left, by the acquisition within it.
      acquisition: "ucb" (mean + beta * std over members: the best) or "thompson" (pick j uses
        member (j + offset) mod members, offset drawn from `key`).
    """
    members = scores.shape[0]
    if acquisition == "ucb":
        value = scores.mean(0) + beta * (scores.std(0) if members > 1 else 0.0)
        return jnp.lexsort((-value, tier))[:num].astype(jnp.int32)
    offset = jax.random.randint(key, (), 0, members)
    chosen = jnp.zeros(scores.shape[1], bool)
    picks = []
    for j in range(num):
        lowest = jnp.min(jnp.where(chosen, jnp.iinfo(jnp.int32).max, tier))
        v = jnp.where(~chosen & (tier == lowest), scores[(j + offset) % members], -jnp.inf)
        i = jnp.argmax(v)
        chosen = chosen.at[i].set(True)
        picks.append(i)
    return jnp.stack(picks).astype(jnp.int32)
