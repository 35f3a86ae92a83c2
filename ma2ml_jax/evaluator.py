"""The evaluator protocol: what a search calls to evaluate an iteration's pipelines.

`evaluate.make_evaluator_with_state` builds the proxy-training evaluator and
`evaluate_layerwise` Iranfar et al.'s; both are `Evaluator`s, whose state the search saves with
its checkpoints. `padded_batches` is the fixed-shape validation batching they share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Metrics = dict[str, Any]
# The recipe used when no agent searches the training recipe.
DEFAULT_RECIPE = {"optimizer": 0, "learning_rate": 0.05, "weight_decay": 5e-4}


class Evaluator(NamedTuple):
    """Pipeline evaluation whose state is explicit, so that a search saves and restores it.

        state = evaluator.init(key)
        state, metrics = evaluator.evaluate(state, pipelines, key)   # one iteration
        state = evaluator.replay(state, metrics)   # the same iteration, its metrics known

    `state` is a pytree of arrays or Python scalars (`()` when the evaluator keeps none). `replay`
    rebuilds the state an iteration left from that iteration's metrics in pipeline order (as the
    trial log keeps them) without evaluating anything: how a resumed search catches up with the
    logged iterations after its checkpoint.
    """

    init: Callable[[jax.Array], Any]
    evaluate: Callable[[Any, list[Mapping[str, Any]], jax.Array], tuple[Any, list[Metrics]]]
    replay: Callable[[Any, list[Mapping[str, Any]]], Any]


def stateless(evaluate: Callable[[list[Mapping[str, Any]], jax.Array], list[Metrics]]
              ) -> Evaluator:
    """An `Evaluator` of an `evaluate(pipelines, key) -> [metrics]` that keeps no state."""
    return Evaluator(init=lambda key: (),
                     evaluate=lambda state, pipelines, key: (state, evaluate(pipelines, key)),
                     replay=lambda state, metrics: state)


def carrying_state(evaluator: Evaluator, key: jax.Array
                   ) -> Callable[[list[Mapping[str, Any]], jax.Array], list[Metrics]]:
    """`evaluate(pipelines, key) -> [metrics]` that carries `evaluator`'s state from one call to
    the next, starting from `evaluator.init(key)`: for callers that never save it (retraining,
    benchmarks). `evaluate.state()` is the current state.
    """
    held = [evaluator.init(key)]

    def evaluate(pipelines: list[Mapping[str, Any]], key: jax.Array) -> list[Metrics]:
        held[0], metrics = evaluator.evaluate(held[0], pipelines, key)
        return metrics

    evaluate.state = lambda: held[0]
    return evaluate


def padded_batches(x: np.ndarray, y: np.ndarray, batch: int):
    """Splits (x, y) into equal batches (the last padded, with a validity mask): one eval shape."""
    n = len(y)
    batch = min(batch, n)
    n_batches = -(-n // batch)
    pad = n_batches * batch - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
    valid = np.arange(n_batches * batch) < n
    return ([jnp.asarray(a) for a in np.split(xp, n_batches)],
            [jnp.asarray(a) for a in np.split(yp, n_batches)],
            [jnp.asarray(a) for a in np.split(valid, n_batches)])
