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

from ma2ml_jax import augment, cost, models, proxy, sharded
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
    compiled: dict[Any, Any] = {}
    arch_space = space[roles["arch"]]
    masked = ev.network == "masked"
    strategy = ev.strategy if masked else "loop"  # exact networks differ in shape: one at a time
    n_epochs = int(np.ceil(total / spe))

    def trainer_for(net):
        key = repr(net)
        if key not in compiled:
            t = proxy.make_trainer(net, image_shape=dataset.image_shape,
                                   num_classes=dataset.num_classes, mean=dataset.mean,
                                   std=dataset.std, total_steps=total,
                                   augment_images=roles["aug"] is not None)
            if strategy == "loop":
                def step(state, x_all, y_all, idx, hp, policy, key, arch):
                    return t.train_step(state, x_all[idx], y_all[idx], hp, policy, key, arch)

                compiled[key] = (jax.jit(t.init), jax.jit(step, donate_argnums=0),
                                 jax.jit(t.eval_batch))
            else:
                compiled[key] = sharded.make_programs(t, strategy)
        return compiled[key]

    def prepare(pipeline: Mapping[str, Any]):
        """(network, arrays, hp, policy, cost) of a pipeline; raises if it cannot be built."""
        recipe = (recipe_space.to_hparams(space[roles["hpo"]], pipeline[roles["hpo"]])
                  if roles["hpo"] else DEFAULT_RECIPE)
        hp = proxy.Hyperparams.from_recipe(recipe, spe)
        if roles["aug"]:
            aspace = space[roles["aug"]]
            policy = augment_space.to_policy(aspace, np.asarray(aspace.encode(
                pipeline[roles["aug"]])))
        else:
            policy = augment.Policy(np.zeros((1, 2), np.int32), np.zeros((1, 2), np.float32),
                                    np.zeros((1, 2), np.int32))
        arch = pipeline[roles["arch"]]
        net, arrays = models.make_network_for(arch_kind, arch_space, arch, dataset.num_classes,
                                              config.model, masked=masked)
        counted = cost.count(arch_kind, arch, dataset.num_classes, dataset.image_shape,
                             config.model)
        return net, arrays, hp, policy, counted

    def batches(key):
        """The iteration's shared data order: (epoch, step, key of the step's batch indices)."""
        k_data = jax.random.fold_in(key, 0)
        for epoch in range(n_epochs):
            perm = jax.random.permutation(jax.random.fold_in(k_data, epoch), n_train)
            for s in range(min(spe, total - epoch * spe)):
                yield epoch, s, jax.lax.dynamic_slice_in_dim(perm, s * ev.batch_size,
                                                             ev.batch_size)

    def pipeline_keys(key, i):
        """(init key, training key) of pipeline i of the iteration."""
        return tuple(jax.random.split(jax.random.fold_in(key, i + 1)))

    def failure_of(worst: float, epoch: int) -> str | None:
        if not np.isfinite(worst):
            return f"nan_loss in epoch {epoch + 1}"
        if worst > ev.loss_threshold:
            return f"loss_threshold: {worst:.3g} > {ev.loss_threshold:g} in epoch {epoch + 1}"
        return None

    def train_one(prepared, key, i) -> Metrics:
        net, arrays, hp, policy, counted = prepared
        init, step, eval_batch = trainer_for(net)
        k_init, k_train = pipeline_keys(key, i)
        state = init(k_init, arrays)
        out: Metrics = {"params": counted.params, "flops": counted.flops, "failure": None,
                        "accuracy": 0.0}
        loss, worst, last_epoch = jnp.zeros(()), jnp.zeros(()), 0
        for epoch, s, idx in batches(key):
            if epoch != last_epoch:  # check for divergence once an epoch (one host sync)
                out["failure"] = failure_of(float(worst), last_epoch)
                if out["failure"]:
                    break
                worst, last_epoch = jnp.zeros(()), epoch
            state, loss = step(state, x_train, y_train, idx, hp, policy,
                               jax.random.fold_in(jax.random.fold_in(k_train, epoch), s + 1),
                               arrays)
            worst = jnp.maximum(worst, jnp.where(jnp.isfinite(loss), loss, jnp.inf))
        out["failure"] = out["failure"] or failure_of(float(worst), last_epoch)
        out["loss"] = float(loss)
        if out["failure"] is None:
            correct = sum(int(eval_batch(state, xb, yb, vb, hp.ema, arrays))
                          for xb, yb, vb in val_batches)
            out["accuracy"] = correct / len(dataset.y_val)
        return out

    def train_group(net, members, key) -> list[Metrics]:
        """Trains pipelines of one shared network together (the pipeline axis sharded)."""
        progs = trainer_for(net)
        ids = [i for i, _ in members]
        _, arrays, hp, policy, _ = zip(*[m for _, m in members])
        keys = [pipeline_keys(key, i) for i in ids]
        n = progs.num_devices
        arrays, _ = sharded.stack(list(arrays), n)
        hp, _ = sharded.stack(list(hp), n)
        policy, _ = sharded.stack(list(policy), n)
        k_init, _ = sharded.stack([jax.random.key_data(k[0]) for k in keys], n)
        k_train = [k[1] for k in keys]
        k_train += [k_train[-1]] * (-len(k_train) % n)
        states = progs.init(jax.random.wrap_key_data(k_init), arrays)
        worst = np.zeros(len(k_train))
        failure: list[str | None] = [None] * len(k_train)
        loss, worst_d, last_epoch = None, jnp.zeros(len(k_train)), 0
        for epoch, s, idx in batches(key):
            if epoch != last_epoch:
                worst = np.asarray(worst_d)
                for j in range(len(ids)):
                    failure[j] = failure[j] or failure_of(float(worst[j]), last_epoch)
                if all(failure[:len(ids)]):
                    break
                worst_d, last_epoch = jnp.zeros(len(k_train)), epoch
            step_keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(k, epoch), s + 1)
                                   for k in k_train])
            states, loss = progs.step(states, x_train, y_train, idx, hp, policy, step_keys,
                                      arrays)
            worst_d = jnp.maximum(worst_d, jnp.where(jnp.isfinite(loss), loss, jnp.inf))
        worst = np.asarray(worst_d)
        correct = sum(np.asarray(progs.eval_batch(states, xb, yb, vb, hp.ema, arrays))
                      for xb, yb, vb in val_batches)
        loss = np.asarray(loss) if loss is not None else np.full(len(k_train), np.nan)
        out = []
        for j, (_, m) in enumerate(members):
            counted = m[4]
            f = failure[j] or failure_of(float(worst[j]), last_epoch)
            out.append({"params": counted.params, "flops": counted.flops, "failure": f,
                        "loss": float(loss[j]),
                        "accuracy": 0.0 if f else float(correct[j]) / len(dataset.y_val)})
        return out

    def evaluate(pipelines: list[Mapping[str, Any]], key: jax.Array) -> list[Metrics]:
        start = time.perf_counter()
        results: list[Metrics | None] = [None] * len(pipelines)
        groups: dict[str, tuple[Any, list]] = {}
        for i, p in enumerate(pipelines):
            try:
                prepared = prepare(p)
            except Exception as e:  # an architecture that cannot be built is a failed pipeline
                results[i] = {"accuracy": 0.0, "loss": float("nan"), "flops": 0.0, "params": 0,
                              "failure": f"build_error: {type(e).__name__}: {e}", "wall_time": 0.0}
                continue
            if strategy == "loop":
                t0 = time.perf_counter()
                results[i] = {**train_one(prepared, key, i), "wall_time": time.perf_counter() - t0}
            else:
                groups.setdefault(repr(prepared[0]), (prepared[0], []))[1].append((i, prepared))
        for net, members in groups.values():
            t0 = time.perf_counter()
            metrics = train_group(net, members, key)
            # The group trained together: each pipeline's share of its wall time.
            wall = (time.perf_counter() - t0) / len(members)
            for (i, _), m in zip(members, metrics):
                results[i] = {**m, "wall_time": wall}
        del start
        return results

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

