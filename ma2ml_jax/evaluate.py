"""Pipeline evaluation: train each pipeline's proxy network and measure it.

`make_evaluator(config, dataset, space)` returns `evaluate(pipelines, key) -> list of metrics`, one
dict per decoded pipeline with: accuracy (validation top-1), loss (final training loss), flops
(multiply-adds of one forward pass, `cost.count`, the classifier counted at
`reward.flops_classes` outputs when set), params, wall_time (seconds) and
failure (None, or the reason the pipeline was stopped: NaN loss, loss over the threshold, a network
that cannot be built).

With `evaluate.network = "masked"` (what "auto" picks but for the cell space on CPU) every
architecture of a space runs in the max-size network with the architecture as an input array, so
there is one compiled program per resolution, and the pipelines that share it train together by
`evaluate.strategy` (see `sharded.py`: loop, unrolled, vmap, map, or "auto", which times one
chunk of each on the first iteration and keeps the fastest). "exact" compiles an exactly-shaped
network per architecture (the reference), one pipeline at a time. The recipe and the augmentation
policy are arrays: they never recompile.

`make_evaluator_with_state(config, dataset, space)` returns the same evaluation as an `Evaluator`
with explicit state (`init`, `evaluate`, `replay`), which the search saves with its checkpoints:
the layerwise evaluator's number of epochs per episode (Iranfar et al.) changes during a search.

Data. An in-memory `data.Dataset` is placed on the devices once and each step indexes it inside
the program. A `stream.StreamingDataset` (large `tfds:` sources) is decoded batch by batch in a
background thread: each chunk of steps gets its own decoded batch, read by the same programs
through rows into it, so nothing else changes; the pipelines trained together share one stream
(the "loop" strategy streams the data again for each pipeline), and the validation split is
streamed after training.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ma2ml_jax import augment, cost, distributed, models, proxy, sharded, stream
from ma2ml_jax.data import Dataset, steps_per_epoch
from ma2ml_jax.errors import DataError
from ma2ml_jax.evaluator import (
    DEFAULT_RECIPE,
    Evaluator,
    Metrics,
    padded_batches,
    stateless,
)
from ma2ml_jax.spaces import PipelineSpace
from ma2ml_jax.spaces import augment as augment_space
from ma2ml_jax.spaces import recipe as recipe_space


def make_evaluator_with_state(config: ml_collections.ConfigDict,
                              dataset: Dataset | stream.StreamingDataset, space: PipelineSpace,
                              log: Callable[[str], Any] = print) -> Evaluator:
    """The evaluation of `make_evaluator` as an `Evaluator`: the layerwise evaluator's state is
    its number of epochs per episode (`evaluate_layerwise`); the others keep none.
    """
    from ma2ml_jax.spaces.layerwise import is_layerwise

    if is_layerwise(space) and not isinstance(dataset, stream.StreamingDataset):
        from ma2ml_jax.evaluate_layerwise import make_layerwise_evaluator_with_state

        return make_layerwise_evaluator_with_state(config, dataset, space, log)
    return stateless(make_evaluator(config, dataset, space, log))


def agent_roles(space: PipelineSpace) -> dict[str, str | None]:
    """Which agent plays which role: {"aug": agent, "arch": agent, "hpo": agent} (None: absent)."""
    roles: dict[str, str | None] = {"aug": None, "arch": None, "hpo": None}
    role_of = {"augment": "aug", "macro": "arch", "cell": "arch", "recipe": "hpo"}
    for agent, s in space.spaces.items():
        roles[role_of[s.name]] = agent
    return roles


def make_evaluator(config: ml_collections.ConfigDict,
                   dataset: Dataset | stream.StreamingDataset, space: PipelineSpace,
                   log: Callable[[str], Any] = print
                   ) -> Callable[[list[Mapping[str, Any]], jax.Array], list[Metrics]]:
    """Returns `evaluate(pipelines, key) -> [metrics]` for decoded pipelines.

    `evaluate.strategy()` tells the strategy in use (after "auto" has chosen); `log` receives
    the choice of "auto". A layerwise pipeline space (Iranfar et al.) is evaluated by
    `evaluate_layerwise` (one CNN at a time, with early termination between batches).
    """
    from ma2ml_jax.spaces.layerwise import is_layerwise

    streaming = isinstance(dataset, stream.StreamingDataset)
    if is_layerwise(space):
        if streaming:
            raise DataError(f"{dataset.name} streams (data.stream), but layerwise spaces train "
                            "on in-memory data; use a smaller source or data.stream='false'")
        from ma2ml_jax.evaluate_layerwise import make_layerwise_evaluator

        return make_layerwise_evaluator(config, dataset, space, log)
    roles = agent_roles(space)
    if roles["arch"] is None:
        raise ValueError("the pipeline space has no architecture agent (a 'macro' or 'cell' space)")
    arch_kind = space[roles["arch"]].name
    ev = config.evaluate
    if streaming:
        n_train, n_val = dataset.train_size, dataset.val_size
        # Full batches of the smallest host's range: every host takes the same steps.
        spe = dataset.steps_per_epoch(ev.batch_size)
    else:
        n_train, n_val = len(dataset.y_train), len(dataset.y_val)
        spe = steps_per_epoch(n_train, ev.batch_size)
        x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
        val_batches = list(zip(*padded_batches(dataset.x_val, dataset.y_val,
                                                ev.eval_batch_size)))
    total = max(1, int(round(ev.epochs * spe)))
    compiled: dict[Any, sharded.Programs] = {}
    arch_space = space[roles["arch"]]
    masked = resolve_network(ev.network, arch_kind, jax.default_backend()) == "masked"
    n_epochs = int(np.ceil(total / spe))
    # The config retrain.py rebuilds from a search's config.json may lack the key.
    flops_classes = int(config.reward.get("flops_classes", 0))
    # scan: an epoch per call; host: `steps_per_call` steps per call (never more than an epoch).
    steps_per_call = spe if ev.step_loop == "scan" else min(ev.steps_per_call, spe)
    # Exact networks differ in shape: they cannot share a pipeline axis.
    chosen = {"strategy": ev.strategy if masked else "loop"}

    placed: dict[bool, tuple[Any, Any]] = {}

    def placed_data(progs: sharded.Programs):
        """(x_train, y_train), val_batches laid out once as the programs read them (replicated
        on the mesh), so that no call copies them to the devices again.
        """
        if progs.stacked not in placed:
            placed[progs.stacked] = progs.replicate(((x_train, y_train), val_batches))
        return placed[progs.stacked]

    def trainer_for(net, strategy):
        key = (repr(net), strategy)
        if key not in compiled:
            t = proxy.make_trainer(net, image_shape=dataset.image_shape,
                                   num_classes=dataset.num_classes, mean=dataset.mean,
                                   std=dataset.std, total_steps=total,
                                   augment_images=roles["aug"] is not None)
            compiled[key] = sharded.make_programs(t, strategy, steps_per_call=steps_per_call,
                                                  step_loop=ev.step_loop,
                                                  map_chunk=ev.map_chunk)
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
                             config.model, flops_classes=flops_classes)
        return net, arrays, hp, policy, counted

    def chunk_plan(epoch):
        """The chunks of an epoch: (step0, valid[S]), steps step0 .. step0 + S - 1 of which those
        past the epoch's last step are padding.
        """
        n_steps = min(spe, total - epoch * spe)
        for step0 in range(0, n_steps, steps_per_call):
            yield np.int32(step0), np.arange(step0, step0 + steps_per_call) < n_steps

    def epoch_chunks(key, epoch):
        """The chunks of an epoch of the iteration's shared data order: (step0, rows, valid)."""
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch),
                                      n_train)
        rows = perm[:spe * ev.batch_size].reshape(spe, ev.batch_size)
        for step0, valid in chunk_plan(epoch):
            j = np.arange(step0, step0 + steps_per_call)
            take = rows[step0:step0 + steps_per_call] if valid.all() else rows[np.where(
                valid, j, step0)]
            yield step0, take, valid

    def placer(progs: sharded.Programs):
        """Places a streamed batch as `progs` reads it (on the default device for "loop")."""
        return progs.replicate if progs.stacked else jax.device_put

    @contextlib.contextmanager
    def training_data(progs: sharded.Programs, key, epochs: int, chunks: int | None = None):
        """`data(epoch)`: the chunks (step0, x_all, y_all, rows, valid) of an epoch as
        `progs.train` reads them: the placed training set with rows of the iteration's data
        order, or each streamed chunk's batch with the rows into it (its decoding stops when the
        block ends; `chunks` limits it to the first chunks).
        """
        if not streaming:
            (x_all, y_all), _ = placed_data(progs)
            yield lambda epoch: ((step0, x_all, y_all, rows, valid)
                                 for step0, rows, valid in epoch_chunks(key, epoch))
            return
        plan = [(e, step0, valid) for e in range(epochs) for step0, valid in chunk_plan(e)]
        # The same seed on every host: one data order per iteration, as in memory.
        seed = np.asarray(jax.random.key_data(jax.random.fold_in(key, 0))).ravel().tolist()
        batches = dataset.train_batches(plan[:chunks], ev.batch_size, seed, placer(progs))

        def data(epoch):
            for step0, valid in chunk_plan(epoch):
                x_all, y_all, rows = next(batches)
                yield step0, x_all, y_all, rows, valid

        try:
            yield data
        finally:
            batches.close()

    @contextlib.contextmanager
    def validation_data(progs: sharded.Programs):
        """The validation batches (x, y, valid) as `progs.eval_batch` reads them."""
        if not streaming:
            yield placed_data(progs)[1]
            return
        batches = dataset.eval_batches(ev.eval_batch_size, placer(progs))
        try:
            yield batches
        finally:
            batches.close()

    def pipeline_keys(key, i):
        """(init key data, training key data) of pipeline i of the iteration."""
        return tuple(jax.random.key_data(k)
                     for k in jax.random.split(jax.random.fold_in(key, i + 1)))

    def failure_of(worst: float, epoch: int) -> str | None:
        if not np.isfinite(worst):
            return f"nan_loss in epoch {epoch + 1}"
        if worst > ev.loss_threshold:
            return f"loss_threshold: {worst:.3g} > {ev.loss_threshold:g} in epoch {epoch + 1}"
        return None

    def over_time_budget(first_epoch_end, epoch: int, together: int) -> str | None:
        """The failure of pipelines whose training time, projected over all epochs from the ones
        after the first (which compiles), exceeds evaluate.time_budget; `together` pipelines
        share the time (trained in one program).
        """
        if not ev.time_budget or first_epoch_end is None:
            return None
        # Every process must take the same decision: process 0's clock decides.
        elapsed = float(distributed.broadcast(np.float32(time.perf_counter() - first_epoch_end)))
        per_epoch = elapsed / epoch / together
        projected = per_epoch * n_epochs
        if projected > ev.time_budget:
            return (f"time_budget: {projected:.3g} s projected > {ev.time_budget:g} s after "
                    f"epoch {epoch + 1} of {n_epochs}")
        return None

    def stage(progs: sharded.Programs, members, key):
        """(arch, hp, policy, init key data, train key data) of pipelines [(index, prepared)]:
        stacked over the pipeline axis and padded for the mesh, or one pipeline's for "loop".
        """
        _, arrays, hp, policy, _ = zip(*[m for _, m in members])
        keys = [pipeline_keys(key, i) for i, _ in members]
        per = (list(arrays), list(hp), list(policy), [k[0] for k in keys], [k[1] for k in keys])
        if not progs.stacked:
            assert len(members) == 1, "loop programs take one pipeline"
            return tuple(v[0] for v in per)
        return tuple(sharded.stack(v, progs.num_devices)[0] for v in per)

    def train(progs: sharded.Programs, members, key) -> list[Metrics]:
        """Trains pipelines [(index, prepared)] of one shared network with `progs`.

        "loop" programs take one pipeline: then `members` holds exactly one.
        """
        arrays, hp, policy, k_init, k_train = stage(progs, members, key)
        states = progs.init(k_init, arrays)
        inputs = sharded.PipelineInputs(hp, policy, k_train, arrays)
        failure: list[str | None] = [None] * len(members)
        losses = None
        first_epoch_end = None
        with training_data(progs, key, n_epochs) as data:
            for epoch in range(n_epochs):
                worst = []
                for step0, x_all, y_all, rows, valid in data(epoch):
                    on_mesh = progs.replicate(valid)  # read by `train` and by the line below
                    states, losses = progs.train(states, inputs, sharded.ChunkInputs(
                        x_all, y_all, rows, on_mesh, np.int32(epoch), step0))
                    w = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
                    worst.append(jnp.where(on_mesh, w, -jnp.inf).max(-1))
                    last = int(valid.sum()) - 1
                # Divergence is checked once an epoch: one host sync.
                worst = np.atleast_1d(distributed.to_host(jnp.stack(worst).max(0)))
                for j in range(len(members)):
                    failure[j] = failure[j] or failure_of(float(worst[j]), epoch)
                over = over_time_budget(first_epoch_end, epoch, len(members))
                if over:
                    failure = [f or over for f in failure]
                if epoch == 0:
                    first_epoch_end = time.perf_counter()
                if all(failure):
                    break
        final_loss = np.atleast_1d(distributed.to_host(losses[..., last]))
        correct = np.zeros(len(final_loss))
        if not all(failure):
            with validation_data(progs) as val:
                correct = np.atleast_1d(distributed.to_host(sum(
                    progs.eval_batch(states, xb, yb, vb, hp.ema, arrays)
                    for xb, yb, vb in val)))
        out = []
        for j, (_, m) in enumerate(members):
            counted = m[4]
            out.append({"params": counted.params, "flops": counted.flops, "failure": failure[j],
                        "loss": float(final_loss[j]),
                        "accuracy": 0.0 if failure[j] else float(correct[j]) / n_val})
        return out

    def choose_strategy(net, members, key) -> str:
        """`evaluate.strategy = "auto"`: times one chunk of the group under each candidate."""
        def timer(strategy):
            progs = trainer_for(net, strategy)
            # "loop" trains one pipeline per call: time one, count it for the whole group.
            group = members[:1] if strategy == "loop" else members
            scale = len(members) if strategy == "loop" else 1
            return lambda: scale * time_one_chunk(progs, group, key)

        candidates = auto_candidates(jax.default_backend(), len(jax.devices()))
        if len(candidates) == 1:
            log(f"evaluate.strategy=auto: {candidates[0]!r} on {jax.default_backend()} "
                "(docs/BENCHMARKS.md)")
            return candidates[0]
        fastest = pick_fastest({s: timer(s) for s in candidates}, log,
                               f"one chunk of {steps_per_call} steps of {len(members)} pipelines")
        # Timings differ between processes; all must train with process 0's choice.
        return candidates[int(distributed.broadcast(np.int32(candidates.index(fastest))))]

    def time_one_chunk(progs, members, key) -> float:
        """Seconds of one call of `progs.train` on the group (compiled by a first call)."""
        arrays, hp, policy, k_init, k_train = stage(progs, members, key)
        states = progs.init(k_init, arrays)
        with training_data(progs, key, 1, chunks=1) as data:
            step0, x_all, y_all, rows, valid = next(data(0))
        for _ in range(2):
            t0 = time.perf_counter()
            states, losses = progs.train(
                states, sharded.PipelineInputs(hp, policy, k_train, arrays),
                sharded.ChunkInputs(x_all, y_all, rows, valid, np.int32(0), step0))
            jax.block_until_ready(losses)
        return time.perf_counter() - t0

    def evaluate(pipelines: list[Mapping[str, Any]], key: jax.Array) -> list[Metrics]:
        results: list[Metrics | None] = [None] * len(pipelines)
        groups: dict[str, tuple[Any, list]] = {}
        for i, p in enumerate(pipelines):
            try:
                prepared = prepare(p)
            except Exception as e:  # an architecture that cannot be built is a failed pipeline
                results[i] = {"accuracy": 0.0, "loss": float("nan"), "flops": 0.0, "params": 0,
                              "failure": f"build_error: {type(e).__name__}: {e}", "wall_time": 0.0}
                continue
            groups.setdefault(repr(prepared[0]), (prepared[0], []))[1].append((i, prepared))
        for net, members in groups.values():
            if chosen["strategy"] == "auto":
                chosen["strategy"] = choose_strategy(net, members, key)
            progs = trainer_for(net, chosen["strategy"])
            batches = [[m] for m in members] if not progs.stacked else [members]
            for batch in batches:
                t0 = time.perf_counter()
                metrics = train(progs, batch, key)
                # Pipelines trained together share the wall time equally.
                wall = (time.perf_counter() - t0) / len(batch)
                for (i, _), m in zip(batch, metrics):
                    results[i] = {**m, "wall_time": wall}
        return results

    evaluate.strategy = lambda: chosen["strategy"]  # the strategy in use (after "auto" chose)
    return evaluate


NETWORKS = ("auto", "masked", "exact")  # `evaluate.network`, `retrain.network`


def resolve_network(network: str, arch_kind: str, backend: str) -> str:
    """"masked" or "exact" for `evaluate.network`; "auto": exact networks for the cell space on
    CPU, the masked network otherwise.

    Measured on CPU (docs/BENCHMARKS.md, "Compile time and step time of the cell network"):
    XLA:CPU runs convolutions inside control flow (the masked network's `lax.switch` and scan,
    jax-ml/jax#12868) and grouped depthwise convolutions on slow paths, so a masked cell step
    cost several times an exact one, while the masked program compiled no faster than one exact
    network: the exact networks, compiled once per architecture, win unless a pipeline trains
    for only a handful of steps. On accelerators the switch runs only the chosen branch with the
    ordinary kernels, and one masked program serves every architecture. The macro space's masked
    network has no switch and is the choice everywhere.
    """
    if network != "auto":
        return network
    return "exact" if arch_kind == "cell" and backend == "cpu" else "masked"


def auto_candidates(backend: str, num_devices: int) -> tuple[str, ...]:
    """The strategies `evaluate.strategy = "auto"` times (each compiles once: its price).

    On CPU only "loop": it was the fastest in bench/throughput.py on this project's CPU, and CPU
    "devices" share the same cores. On accelerators every strategy but "loop" when there are
    several devices ("loop" trains on one device only).
    """
    if backend == "cpu":
        return ("loop",)
    sharded_ones = ("unrolled", "vmap", "map")
    return sharded_ones if num_devices > 1 else ("loop",) + sharded_ones


def pick_fastest(timers: Mapping[str, Callable[[], float]], log: Callable[[str], Any],
                 what: str) -> str:
    """The candidate whose timer returns the fewest seconds; logs every time and the choice.

    A candidate whose timer raises (out of memory, say) is reported and left out.
    """
    times: dict[str, float] = {}
    for name, timer in timers.items():
        try:
            times[name] = timer()
        except Exception as e:  # noqa: BLE001 - a failing candidate is not a failed search
            log(f"evaluate.strategy=auto: {name} failed ({type(e).__name__}: {e}); skipped")
    if not times:
        raise RuntimeError("evaluate.strategy=auto: every candidate strategy failed")
    best = min(times, key=times.get)
    log(f"evaluate.strategy=auto: {what} takes "
        + ", ".join(f"{name} {t * 1e3:.0f} ms" for name, t in times.items())
        + f"; using {best!r}")
    return best

