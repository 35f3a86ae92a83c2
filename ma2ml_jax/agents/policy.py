"""Categorical policies over one agent's decisions: factorized and autoregressive.

An agent's action is a vector of tokens, one per decision of its `Space` (decision `t` has
`sizes[t]` choices). Both policies expose the same pure functions:

    params = policy.init(key)
    tokens = policy.sample(params, key, num)              # int32[num, n]
    logits = policy.logits(params, tokens)                # float32[..., n, max_size]
    policy.log_prob(params, tokens)                       # float32[...]: log pi(A)
    policy.entropy(params, tokens)                        # float32[...]
    policy.kl(params, other_params, tokens)               # float32[...]: KL(pi || rho)

`logits` are the conditional logits of every decision given the earlier tokens of `tokens`
(teacher forcing), with the choices a decision does not have masked out. For the factorized
policy they do not depend on `tokens`, so `entropy` and `kl` are exact. For the autoregressive
policy, `entropy` and `kl` sum the per-decision entropies / KLs along `tokens`; by the chain rule
this is an unbiased estimate of the sequence entropy / KL(pi || rho) when `tokens ~ pi`.

The autoregressive policy is a GRU controller in the style of the NAS / AutoAugment controllers
the paper builds on: it starts from a learned initial state and samples the decisions in order,
each fed the embedding of the previous token. Both policies start uniform (zero output layers),
so the first iteration of every searcher samples like random search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.spaces import Space

POLICIES = ("factorized", "autoregressive")
_MASKED = -1e9  # logit of a choice a decision does not have (exp underflows to exactly 0)


class Policy(NamedTuple):
    """A categorical policy over a space's decisions, as pure functions (see module doc)."""

    init: Callable[[jax.Array], Any]
    sample: Callable[[Any, jax.Array, int], jax.Array]
    logits: Callable[[Any, jax.Array], jax.Array]
    factorized: bool  # True: logits do not depend on tokens; entropy and KL are exact
    n_decisions: int
    max_size: int

    def log_prob(self, params, tokens: jax.Array) -> jax.Array:
        """Log pi(tokens): float32[...] for tokens int32[..., n]."""
        tokens = jnp.asarray(tokens)
        logp = jax.nn.log_softmax(self.logits(params, tokens), axis=-1)
        return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0].sum(-1)

    def entropy(self, params, tokens: jax.Array) -> jax.Array:
        """Sum over decisions of the conditional entropies along `tokens` (exact if factorized)."""
        logp = jax.nn.log_softmax(self.logits(params, tokens), axis=-1)
        return -(jnp.exp(logp) * logp).sum((-1, -2))

    def kl(self, params, other, tokens: jax.Array) -> jax.Array:
        """KL(pi_params || pi_other): exact if factorized, else unbiased when tokens ~ pi_params."""
        logp = jax.nn.log_softmax(self.logits(params, tokens), axis=-1)
        logq = jax.nn.log_softmax(self.logits(other, tokens), axis=-1)
        return (jnp.exp(logp) * (logp - logq)).sum((-1, -2))


def make_policy(space: Space, kind: str = "factorized", hidden: int = 64) -> Policy:
    """A `kind` policy ('factorized' | 'autoregressive') over the decisions of `space`."""
    if kind == "factorized":
        return _factorized(space)
    if kind == "autoregressive":
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        return _autoregressive(space, hidden)
    raise ValueError(f"unknown policy kind {kind!r}; valid: {list(POLICIES)}")


def _mask(space: Space) -> jax.Array:
    """float32[n, max_size]: 0 for a decision's choices, _MASKED for the padding."""
    valid = np.arange(space.max_size)[None, :] < space.sizes[:, None]
    return jnp.asarray(np.where(valid, 0.0, _MASKED), jnp.float32)


def _categorical(key, logits):
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _factorized(space: Space) -> Policy:
    n, m = space.n_decisions, space.max_size
    mask = _mask(space)

    def init(key):
        del key
        return {"logits": jnp.zeros((n, m), jnp.float32)}

    def logits(params, tokens):
        return jnp.broadcast_to(params["logits"] + mask, tokens.shape + (m,))

    def sample(params, key, num):
        return _categorical(key, jnp.broadcast_to(params["logits"] + mask, (num, n, m)))

    return Policy(init, sample, logits, True, n, m)


def _autoregressive(space: Space, hidden: int) -> Policy:
    n, m = space.n_decisions, space.max_size
    mask = _mask(space)
    cell = nn.GRUCell(features=hidden)

    def init(key):
        k_cell, k_emb, k_h = jax.random.split(key, 3)
        x = jnp.zeros((hidden,), jnp.float32)
        return {
            "cell": cell.init(k_cell, x, x)["params"],
            "h0": 0.1 * jax.random.normal(k_h, (hidden,)),
            "start": jnp.zeros((hidden,), jnp.float32),
            # Embedding of decision t's token, the input of step t + 1.
            "embed": 0.1 * jax.random.normal(k_emb, (n, m, hidden)),
            # Zero heads: the controller starts uniform, like random search.
            "head_w": jnp.zeros((n, hidden, m), jnp.float32),
            "head_b": jnp.zeros((n, m), jnp.float32),
        }

    def step(params, h, x, t):
        h, _ = cell.apply({"params": params["cell"]}, h, x)
        return h, h @ params["head_w"][t] + params["head_b"][t] + mask[t]

    def logits(params, tokens):
        tokens = jnp.asarray(tokens)
        lead = tokens.shape[:-1]
        flat = tokens.reshape((-1, n))
        b = flat.shape[0]

        def body(h, t):
            prev = jnp.where(t == 0, params["start"][None, :],
                             params["embed"][jnp.maximum(t - 1, 0), flat[:, jnp.maximum(t - 1, 0)]])
            h, out = step(params, h, prev, t)
            return h, out

        h0 = jnp.broadcast_to(params["h0"], (b, hidden))
        _, out = jax.lax.scan(body, h0, jnp.arange(n))  # [n, b, m]
        return jnp.moveaxis(out, 0, 1).reshape(lead + (n, m))

    def sample(params, key, num):
        def body(carry, t):
            h, x = carry
            h, out = step(params, h, x, t)
            token = _categorical(jax.random.fold_in(key, t), out)
            return (h, params["embed"][t, token]), token

        h0 = jnp.broadcast_to(params["h0"], (num, hidden))
        x0 = jnp.broadcast_to(params["start"], (num, hidden))
        _, tokens = jax.lax.scan(body, (h0, x0), jnp.arange(n))  # [n, num]
        return tokens.T

    return Policy(init, sample, logits, False, n, m)
