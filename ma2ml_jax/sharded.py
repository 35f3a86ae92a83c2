"""Training many pipelines at once: the pipeline axis sharded over a 1-D device mesh.

All pipelines of one resolution share the masked max-size network, so their training states,
recipes, policies and architectures stack along a leading pipeline axis P. The axis is sharded
over `jax.make_mesh((n_devices,), ("pipe",))` with `jax.shard_map` (pipelines are independent: no
cross-device traffic; automatic partitioning of the same vmapped step inserted all-gathers, see
DESIGN.md), P padded to a multiple of the device count. On each device the local pipelines run
by one of two strategies, chosen by measurement:

  * "unrolled": the local pipelines traced one after another into ONE program (ordinary
    convolutions, one dispatch per step for all of them);
  * "vmap": `jax.vmap` over the local pipelines (per-pipeline weights turn convolutions into
    grouped ones, a slow path on CPU).

Every pipeline sees the same sequence of training batches (one data order per iteration), and its
own keys for augmentation, mixup and dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ma2ml_jax.proxy import Trainer

STRATEGIES = ("unrolled", "vmap")


class Programs(NamedTuple):
    """The sharded programs of one trainer: each maps stacked per-pipeline values [P, ...]."""

    init: Callable  # (keys[P], arch[P]) -> states[P]
    step: Callable  # (states, x_all, y_all, idx[B], hp[P], policy[P], keys[P], arch[P])
    #                 -> (states, loss[P])
    eval_batch: Callable  # (states, x[B], y[B], valid[B], use_ema[P], arch[P]) -> correct[P]
    num_devices: int


def _over_local(fn: Callable, strategy: str, batched_argnums: tuple[int, ...]) -> Callable:
    """Fn over the leading (local pipeline) axis of the arguments in `batched_argnums`."""
    if strategy == "vmap":
        in_axes = tuple(0 if i in batched_argnums else None for i in range(16))

        def vmapped(*args):
            return jax.vmap(fn, in_axes=in_axes[:len(args)])(*args)

        return vmapped
    if strategy == "unrolled":
        def unrolled(*args):
            n = jax.tree.leaves(args[batched_argnums[0]])[0].shape[0]
            outs = []
            for p in range(n):  # traced one after another into one program
                outs.append(fn(*(jax.tree.map(lambda a, p=p: a[p], arg)
                                 if i in batched_argnums else arg
                                 for i, arg in enumerate(args))))
            return jax.tree.map(lambda *o: jnp.stack(o), *outs)

        return unrolled
    raise ValueError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")


def make_programs(trainer: Trainer, strategy: str, devices=None) -> Programs:
    """Jitted, sharded versions of a trainer's functions over a stacked pipeline axis."""
    devices = list(devices if devices is not None else jax.devices())
    mesh = jax.make_mesh((len(devices),), ("pipe",), devices=devices)
    pipe, rep = P("pipe"), P()
    placement = {pipe: NamedSharding(mesh, pipe), rep: NamedSharding(mesh, rep)}

    def shard(fn, in_specs, out_specs, donate=()):
        program = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs),
                          donate_argnums=donate)

        def call(*args):
            # The mesh's axes are Explicit (make_mesh's default in JAX 0.10): inputs must already
            # be laid out as the specs say. A no-op for arrays that already are.
            return program(*(jax.device_put(a, placement[spec])
                             for a, spec in zip(args, in_specs)))

        return call

    init = _over_local(lambda k, a: trainer.init(k, a), strategy, (0, 1))

    def step_one(state, x_all, y_all, idx, hp, policy, key, arch):
        return trainer.train_step(state, x_all[idx], y_all[idx], hp, policy, key, arch)

    step = _over_local(step_one, strategy, (0, 4, 5, 6, 7))
    evaluate = _over_local(trainer.eval_batch, strategy, (0, 4, 5))
    return Programs(
        init=shard(init, (pipe, pipe), pipe),
        step=shard(step, (pipe, rep, rep, rep, pipe, pipe, pipe, pipe), (pipe, pipe), donate=(0,)),
        eval_batch=shard(evaluate, (pipe, rep, rep, rep, pipe, pipe), pipe),
        num_devices=len(devices))


def stack(trees: list[Any], multiple: int) -> tuple[Any, int]:
    """Stacks per-pipeline pytrees on a new leading axis, padded (by repeating the last) to a
    multiple of `multiple`; returns the stack and the number of real entries.
    """
    n = len(trees)
    padded = trees + [trees[-1]] * (-n % multiple)
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])),
                        *padded), n
