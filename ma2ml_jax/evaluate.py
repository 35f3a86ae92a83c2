"""Pipeline evaluation: train each pipeline's proxy network and measure it.

`make_evaluator(config, dataset, space)` returns `evaluate(pipelines, key) -> list of metrics`, one
dict per decoded pipeline with: accuracy (validation top-1), loss (final training loss), flops
(multiply-adds of one forward pass, `cost.count`), params, wall_time (seconds) and
failure (None, or the reason the pipeline was stopped: NaN loss, loss over the threshold, a network
that cannot be built).

Pipelines are trained one at a time. With `evaluate.network = "masked"` (the default) every
architecture of a space runs in the max-size network with the architecture as an input array, so
there is one compiled program per resolution; "exact" compiles an exactly-shaped
network per architecture (the reference). The recipe and the augmentation policy are arrays: they
never recompile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ma2ml_jax import augment, cost, models, proxy
from ma2ml_jax.config import steps_per_epoch
from ma2ml_jax.data import Dataset
from ma2ml_jax.spaces import PipelineSpace
from ma2ml_jax.spaces import augment as augment_space
from ma2ml_jax.spaces import recipe as recipe_space

Metrics = dict[str, Any]
# The recipe used when no agent searches the training recipe.
DEFAULT_RECIPE = {"optimizer": 0, "learning_rate": 0.05, "weight_decay": 5e-4}


def agent_roles(space: PipelineSpace) -> dict[str, str | None]:
    """Which agent plays which role: {"aug": agent, "arch": agent, "hpo": agent} (None: absent)."""
    roles: dict[str, str | None] = {"aug": None, "arch": None, "hpo": None}
    role_of = {"augment": "aug", "macro": "arch", "cell": "arch", "recipe": "hpo"}
    for agent, s in space.spaces.items():
        roles[role_of[s.name]] = agent
    return roles


def make_evaluator(config: ml_collections.ConfigDict, dataset: Dataset,
                   space: PipelineSpace) -> Callable[[list[Mapping[str, Any]], jax.Array],
                                                     list[Metrics]]:
    """Returns `evaluate(pipelines, key) -> [metrics]` for decoded pipelines."""
    roles = agent_roles(space)
    if roles["arch"] is None:
        raise ValueError("the pipeline space has no architecture agent (a 'macro' or 'cell' space)")
    arch_kind = space[roles["arch"]].name
    ev = config.evaluate
    n_train = len(dataset.y_train)
    spe = steps_per_epoch(n_train, ev.batch_size)
    total = max(1, int(round(ev.epochs * spe)))
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    val_batches = list(zip(*_padded_batches(dataset.x_val, dataset.y_val, ev.eval_batch_size)))
    compiled: dict[Any, tuple] = {}
    arch_space = space[roles["arch"]]

    def programs(arch: Mapping[str, Any]):
        """(init, step, eval_batch, arch arrays or None) of an architecture, compiled once."""
        net, arrays = models.make_network_for(arch_kind, arch_space, arch, dataset.num_classes,
                                              config.model, masked=ev.network == "masked")
        key = repr(net)
        if key not in compiled:
            t = proxy.make_trainer(net, image_shape=dataset.image_shape,
                                   num_classes=dataset.num_classes, mean=dataset.mean,
                                   std=dataset.std, total_steps=total,
                                   augment_images=roles["aug"] is not None)

            def step(state, x_all, y_all, idx, hp, policy, key, arch):
                return t.train_step(state, x_all[idx], y_all[idx], hp, policy, key, arch)

            compiled[key] = (jax.jit(t.init), jax.jit(step, donate_argnums=0),
                             jax.jit(t.eval_batch))
        return (*compiled[key], arrays)

    def evaluate_one(pipeline: Mapping[str, Any], key: jax.Array) -> Metrics:
        start = time.perf_counter()
        out: Metrics = {"accuracy": 0.0, "loss": float("nan"), "flops": 0.0, "params": 0,
                        "failure": None}
        recipe = (recipe_space.to_hparams(space[roles["hpo"]], pipeline[roles["hpo"]])
                  if roles["hpo"] else DEFAULT_RECIPE)
        hp = proxy.Hyperparams.from_recipe(recipe, spe)
        if roles["aug"]:
            aspace = space[roles["aug"]]
            policy = augment_space.to_policy(aspace, jnp.asarray(aspace.encode(pipeline[roles[
                "aug"]])))
        else:
            policy = augment.Policy(jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)),
                                    jnp.zeros((1, 2), jnp.int32))
        arch = pipeline[roles["arch"]]
        try:
            init, step, eval_batch, arrays = programs(arch)
            counted = cost.count(arch_kind, arch, dataset.num_classes, dataset.image_shape,
                                 config.model)
        except Exception as e:  # an architecture that cannot be built is a failed pipeline
            out.update(failure=f"build_error: {type(e).__name__}: {e}",
                       wall_time=time.perf_counter() - start)
            return out
        k_init, k_train = jax.random.split(key)
        state = init(k_init, arrays)
        out["params"], out["flops"] = counted.params, counted.flops
        loss = jnp.zeros(())
        for epoch in range(int(np.ceil(total / spe))):
            k_epoch = jax.random.fold_in(k_train, epoch)
            perm = jax.random.permutation(k_epoch, n_train)
            worst = jnp.zeros(())
            for s in range(min(spe, total - epoch * spe)):
                idx = jax.lax.dynamic_slice_in_dim(perm, s * ev.batch_size, ev.batch_size)
                state, loss = step(state, x_train, y_train, idx, hp, policy,
                                   jax.random.fold_in(k_epoch, s + 1), arrays)
                worst = jnp.maximum(worst, jnp.where(jnp.isfinite(loss), loss, jnp.inf))
            worst = float(worst)
            if not np.isfinite(worst):
                out.update(failure=f"nan_loss in epoch {epoch + 1}")
                break
            if worst > ev.loss_threshold:
                out.update(failure=f"loss_threshold: {worst:.3g} > {ev.loss_threshold:g} in epoch "
                                   f"{epoch + 1}")
                break
        out["loss"] = float(loss)
        if out["failure"] is None:
            correct = sum(int(eval_batch(state, xb, yb, vb, hp.ema, arrays))
                          for xb, yb, vb in val_batches)
            out["accuracy"] = correct / len(dataset.y_val)
        out["wall_time"] = time.perf_counter() - start
        return out

    def evaluate(pipelines: list[Mapping[str, Any]], key: jax.Array) -> list[Metrics]:
        return [evaluate_one(p, jax.random.fold_in(key, i)) for i, p in enumerate(pipelines)]

    return evaluate


def _padded_batches(x: np.ndarray, y: np.ndarray, batch: int):
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

