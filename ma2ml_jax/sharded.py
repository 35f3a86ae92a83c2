"""Training many pipelines at once: the pipeline axis sharded over a 1-D device mesh.

All pipelines of one resolution share the masked max-size network, so their training states,
recipes, policies and architectures stack along a leading pipeline axis P. The axis is sharded
over `jax.make_mesh((n_devices,), ("pipe",))` with `jax.shard_map` (pipelines are independent: no
cross-device traffic; automatic partitioning of the same vmapped step inserted all-gathers, see
DESIGN.md), P padded to a multiple of the device count. In a multi-process run (a TPU pod slice)
the mesh holds every process's devices, so each host trains its share of the pipelines
(`distributed.py`). How the pipelines run is a measured choice (`evaluate.strategy`,
`bench/throughput.py`):

  * "loop": one pipeline at a time, each call its own dispatch (no pipeline axis at all);
  * "unrolled": the local pipelines traced one after another into ONE program (ordinary
    convolutions, one dispatch per call for all of them; the program grows with P);
  * "vmap": `jax.vmap` over the local pipelines (per-pipeline weights turn convolutions into
    grouped ones, and a masked network's `lax.switch` into a select over every branch);
  * "map": `jax.lax.map` over the local pipelines in chunks of `map_chunk` (vmapped within a
    chunk): one program the size of a chunk, the pipelines looped on the device.

Across steps (`evaluate.step_loop`): "host" calls one jitted program per `steps_per_call` steps
(traced one after another), "scan" runs a whole epoch in one `lax.scan`. A chunk is padded to a
fixed length with invalid steps that leave the state alone, so a short last epoch does not
compile again.

Every pipeline sees the same sequence of training batches (one data order per iteration), and its
own keys for augmentation, mixup and dropout: step s of epoch e uses
`fold_in(fold_in(train_key, e), s + 1)`, derived inside the program.
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

STRATEGIES = ("loop", "unrolled", "vmap", "map")
STEP_LOOPS = ("host", "scan")


class PipelineInputs(NamedTuple):
    """What one pipeline trains with besides its state; stacked, every leaf has a leading
    pipeline axis [P] (`stack`), sharded over the mesh.
    """

    hp: Any  # the recipe's traced values (`proxy.HParams`)
    policy: Any  # the augmentation policy's arrays
    key_data: jax.Array  # uint32 key data of the pipeline's training key
    arch: Any  # the architecture's arrays (None: a network without searched arrays)


class ChunkInputs(NamedTuple):
    """What the pipelines of a call share (replicated): the training set, the chunk's steps."""

    x_all: jax.Array  # [N, ...] training images
    y_all: jax.Array  # [N] labels
    rows: jax.Array  # int32[S, B]: step j trains on x_all[rows[j]]
    valid: jax.Array  # bool[S]: a padded step (False) changes nothing and reports loss 0
    epoch: jax.Array  # int32[]
    step0: jax.Array  # int32[]: the index of step 0 of the chunk within its epoch


class Programs(NamedTuple):
    """The jitted programs of one trainer and strategy.

    With `stacked` every argument marked [P] has a leading pipeline axis (a multiple of
    `num_devices`, see `stack`); without it ("loop") they are one pipeline's values.
    """

    init: Callable  # (key_data[P], arch[P]) -> states[P]
    # (states[P], PipelineInputs[P], ChunkInputs) -> (states, losses[P, S])
    train: Callable
    eval_batch: Callable  # (states, x[B], y[B], valid[B], use_ema[P], arch[P]) -> correct[P]
    num_devices: int
    stacked: bool
    steps_per_call: int  # S
    # Lays out a pytree as `train` reads its replicated arguments (the training set): placed once,
    # they are not copied to the devices again on every call.
    replicate: Callable = lambda tree: tree


def make_train_chunk(trainer: Trainer, steps: int, step_loop: str) -> Callable:
    """One pipeline's training over a chunk of `steps` steps, as a pure function.

    Returns `train(state, pipeline: PipelineInputs, chunk: ChunkInputs)` -> (state, losses
    float32[steps]): step j trains on `chunk.x_all[chunk.rows[j]]` if `chunk.valid[j]` (a padded
    step leaves the state unchanged and reports loss 0).
    """
    if step_loop not in STEP_LOOPS:
        raise ValueError(f"unknown step loop {step_loop!r}; valid: {STEP_LOOPS}")

    def train(state, pipeline: PipelineInputs, chunk: ChunkInputs):
        k_epoch = jax.random.fold_in(jax.random.wrap_key_data(pipeline.key_data), chunk.epoch)

        def one(state, j):
            key = jax.random.fold_in(k_epoch, chunk.step0 + j + 1)
            idx = chunk.rows[j]
            return trainer.train_step(state, chunk.x_all[idx], chunk.y_all[idx], pipeline.hp,
                                      pipeline.policy, key, pipeline.arch)

        def guarded(state, j):
            if steps == 1:  # a one-step chunk is never padded
                return one(state, j)
            # A padded step's loss is 0, derived from the state so that it varies over the
            # mesh axis exactly as a real step's loss does (shard_map checks the branches agree).
            return jax.lax.cond(chunk.valid[j], one,
                                lambda s, _: (s, 0.0 * s.step.astype(jnp.float32)), state, j)

        if step_loop == "scan":
            return jax.lax.scan(guarded, state, jnp.arange(steps))
        losses = []
        for j in range(steps):  # traced one after another into one program
            state, loss = guarded(state, j)
            losses.append(loss)
        return state, jnp.stack(losses)

    return train


def _over_local(fn: Callable, strategy: str, batched_argnums: tuple[int, ...],
                map_chunk: int = 1) -> Callable:
    """Fn over the leading (local pipeline) axis of the arguments in `batched_argnums`."""
    if strategy == "vmap":
        def vmapped(*args):
            in_axes = tuple(0 if i in batched_argnums else None for i in range(len(args)))
            return jax.vmap(fn, in_axes=in_axes)(*args)

        return vmapped
    if strategy == "map":
        def mapped(*args):
            batched = tuple(args[i] for i in batched_argnums)

            def body(xs):
                full = list(args)
                for i, x in zip(batched_argnums, xs):
                    full[i] = x
                return fn(*full)

            return jax.lax.map(body, batched, batch_size=map_chunk if map_chunk > 1 else None)

        return mapped
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


def make_programs(trainer: Trainer, strategy: str, devices=None, *, steps_per_call: int = 1,
                  step_loop: str = "host", map_chunk: int = 1) -> Programs:
    """Jitted (and, but for "loop", sharded) programs of a trainer.

    Args:
      trainer: the pure functions of one network (`proxy.make_trainer`).
      strategy: one of STRATEGIES.
      devices: the devices of the mesh (default: all, those of every process in a multi-process
        run: each host then trains its share of the pipeline axis, see `distributed.py`).
      steps_per_call: training steps in one call of `train`.
      step_loop: "host" (the steps traced one after another) or "scan" (a `lax.scan`).
      map_chunk: pipelines vmapped together inside the "map" strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")
    if steps_per_call < 1 or map_chunk < 1:
        raise ValueError(f"steps_per_call={steps_per_call} and map_chunk={map_chunk} must be >= 1")
    chunk = make_train_chunk(trainer, steps_per_call, step_loop)

    def init_one(key_data, arch):
        return trainer.init(jax.random.wrap_key_data(key_data), arch)

    if strategy == "loop":
        return Programs(jax.jit(init_one), jax.jit(chunk, donate_argnums=0),
                        jax.jit(trainer.eval_batch), 1, False, steps_per_call)

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
            return program(*(place(a, placement[spec]) for a, spec in zip(args, in_specs)))

        return call

    init = _over_local(init_one, strategy, (0, 1), map_chunk)
    train = _over_local(chunk, strategy, (0, 1), map_chunk)
    evaluate = _over_local(trainer.eval_batch, strategy, (0, 4, 5), map_chunk)
    return Programs(
        init=shard(init, (pipe, pipe), pipe),
        train=shard(train, (pipe, pipe, rep), (pipe, pipe), donate=(0,)),
        eval_batch=shard(evaluate, (pipe, rep, rep, rep, pipe, pipe), pipe),
        num_devices=len(devices), stacked=True, steps_per_call=steps_per_call,
        replicate=lambda tree: place(tree, placement[rep]))


def place(tree: Any, sharding: NamedSharding) -> Any:
    """A pytree laid out with `sharding` (a no-op for arrays that already are).

    With several processes `jax.device_put` of a host value onto a mesh spanning them first
    checks that every process holds the same value (an all-gather and a compile per shape, on
    every call); here every process holds the same full value by construction (same seed, same
    data, pipelines from process 0), so each builds its own shards from it without talking.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # Already spread over the processes (a program's output, or placed here before);
            # device_put would reshard it (a program of its own) whenever its sharding object
            # differs from `sharding` however equivalently.
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(leaf, tree)


def stack(trees: list[Any], multiple: int) -> tuple[Any, int]:
    """Stacks per-pipeline pytrees on a new leading axis, padded (by repeating the last) to a
    multiple of `multiple`; returns the stack and the number of real entries.
    """
    n = len(trees)
    padded = trees + [trees[-1]] * (-n % multiple)
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])),
                        *padded), n
