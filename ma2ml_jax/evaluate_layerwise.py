"""Evaluation of layerwise pipelines (Iranfar et al.): train each CNN with early termination.

`evaluate.make_evaluator` hands a layerwise pipeline space to `make_layerwise_evaluator`. It trains
with the same pieces as every other pipeline (`proxy.make_trainer`, the "loop" programs of
`sharded.make_programs`, one data order per iteration) but one batch per call, one pipeline at a
time, because Iranfar's early termination is decided on the host between batches
(`termination.py`): the batch time needs every batch timed (a host sync per batch), an epoch-loss
termination restarts the network from a new initialization, and the number of epochs changes
between episodes. The masked, sharded path of the other spaces keeps its checks once per epoch
and is not touched: its pipelines share one program and train together, so one pipeline's
restart or slow batches cannot be acted on without stopping the others.

Each architecture is an exactly-shaped network compiled once (kept in a small cache: exploitation
revisits architectures). The recipe is fixed (`evaluator.DEFAULT_RECIPE`: SGD with momentum, as
the paper's Table II) at a constant learning rate (the number of epochs is not known in advance,
so there is no schedule to anneal); no augmentation agent.

Metrics per pipeline: the usual accuracy, loss, flops, params, wall_time, failure (the termination
message), plus n_epoch (N_epoch of eq. 2's A_val / N_epoch), epochs (trained), attempts (2 after a
restart), clamped (layers whose pooling window or stride was clamped) and next_epochs (the number
of epochs of the next episode).

The number of epochs per episode is the evaluator's state (`termination.EpochBudget`, threaded
through the pipelines of an iteration in order): `make_layerwise_evaluator_with_state` returns an
`evaluator.Evaluator` whose state the search saves with its checkpoints and rebuilds on resume from
the logged next_epochs, so that a resumed search trains the epochs the uninterrupted one would.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from ma2ml_jax import augment, cost, proxy, sharded, termination
from ma2ml_jax.data import Dataset, steps_per_epoch
from ma2ml_jax.evaluator import DEFAULT_RECIPE, Evaluator, carrying_state, padded_batches
from ma2ml_jax.models import layerwise_net
from ma2ml_jax.spaces import PipelineSpace
from ma2ml_jax.spaces import layerwise as layerwise_space

CACHE_SIZE = 32  # compiled architectures kept


def make_layerwise_evaluator(config: ml_collections.ConfigDict, dataset: Dataset,
                             space: PipelineSpace, log: Callable[[str], Any] = print,
                             clock: termination.Clock = time.perf_counter,
                             compiled: collections.OrderedDict | None = None
                             ) -> Callable[[list[Mapping[str, Any]], jax.Array], list[dict]]:
    """Returns `evaluate(pipelines, key) -> [metrics]` for decoded layerwise pipelines, starting
    from the first episodes' number of epochs and carrying it from call to call
    (`evaluate.state()` is the `termination.EpochBudget` of the next episode). A search uses
    `make_layerwise_evaluator_with_state`, whose state it saves.

    Args: as `make_layerwise_evaluator_with_state`.
    """
    evaluator = make_layerwise_evaluator_with_state(config, dataset, space, log, clock, compiled)
    # The state draws no random numbers: any key will do.
    evaluate = carrying_state(evaluator, jax.random.key(0))
    evaluate.strategy = lambda: "loop"
    return evaluate


def make_layerwise_evaluator_with_state(config: ml_collections.ConfigDict, dataset: Dataset,
                                        space: PipelineSpace,
                                        log: Callable[[str], Any] = print,
                                        clock: termination.Clock = time.perf_counter,
                                        compiled: collections.OrderedDict | None = None
                                        ) -> Evaluator:
    """Returns the `evaluator.Evaluator` of decoded layerwise pipelines; its state is the
    `termination.EpochBudget` of the next episode.

    Args:
      config, dataset, space: as `evaluate.make_evaluator`.
      log: receives one line describing the settings.
      clock: seconds, for the batch-time check (a fake one in tests).
      compiled: a cache of compiled programs to share between evaluators (default: its own).
    """
    spec = layerwise_space.spec_of(space)
    ev = config.evaluate
    tcfg = termination.from_config(config.termination, max_epochs=int(ev.epochs),
                                   divergence=float(ev.loss_threshold))
    n_train = len(dataset.y_train)
    spe = steps_per_epoch(n_train, ev.batch_size)
    # Constant learning rate: cosine off, so the schedule length is irrelevant.
    hp = proxy.Hyperparams.from_recipe(DEFAULT_RECIPE, spe)._replace(cosine=np.float32(0.0))
    policy = augment.Policy(np.zeros((1, 2), np.int32), np.zeros((1, 2), np.float32),
                            np.zeros((1, 2), np.int32))
    x_train, y_train = jax.numpy.asarray(dataset.x_train), jax.numpy.asarray(dataset.y_train)
    val_batches = list(zip(*padded_batches(dataset.x_val, dataset.y_val, ev.eval_batch_size)))
    compiled = collections.OrderedDict() if compiled is None else compiled
    valid_one = np.ones((1,), bool)

    def programs_for(arch: layerwise_net.LayerwiseArch) -> sharded.Programs:
        # Everything the programs depend on, so that evaluators can share a cache.
        key = (arch, dataset.num_classes, dataset.image_shape, tcfg.max_epochs * spe,
               np.asarray(dataset.mean).tobytes(), np.asarray(dataset.std).tobytes())
        if key in compiled:
            compiled.move_to_end(key)
            return compiled[key]
        net = layerwise_net.LayerwiseNet(arch, dataset.num_classes)
        trainer = proxy.make_trainer(net, image_shape=dataset.image_shape,
                                     num_classes=dataset.num_classes, mean=dataset.mean,
                                     std=dataset.std, total_steps=tcfg.max_epochs * spe,
                                     augment_images=False)
        compiled[key] = sharded.make_programs(trainer, "loop", steps_per_call=1,
                                              step_loop="host")
        while len(compiled) > CACHE_SIZE:
            compiled.popitem(last=False)
        return compiled[key]

    def one(pipeline: Mapping[str, Any], index: int, key: jax.Array,
            budget: termination.EpochBudget) -> tuple[dict[str, Any], termination.EpochBudget]:
        """One episode: (metrics, the budget of the next episode)."""
        arch = layerwise_net.LayerwiseArch.from_pipeline(spec, pipeline)
        counted = cost.layerwise_cost(arch, dataset.num_classes, dataset.image_shape)
        clamped = layerwise_net.clamped_layers(arch, dataset.image_shape)
        progs = programs_for(arch)
        k_init, k_train = jax.random.split(jax.random.fold_in(key, index + 1))
        k_train = jax.random.key_data(k_train)
        last_loss = [float("nan")]

        inputs = sharded.PipelineInputs(hp, policy, k_train, None)

        def attempt(a: int, monitor: termination.Monitor):
            state = progs.init(jax.random.key_data(jax.random.fold_in(k_init, a)), None)
            for epoch in range(monitor.max_epochs):
                # The iteration's shared data order (as evaluate.py): epoch e of every pipeline.
                perm = jax.random.permutation(
                    jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n_train)
                rows = np.asarray(perm[:spe * ev.batch_size]).reshape(spe, 1, ev.batch_size)
                total = 0.0
                for s in range(spe):
                    monitor.batch_started()
                    state, losses = progs.train(state, inputs, sharded.ChunkInputs(
                        x_train, y_train, rows[s], valid_one, np.int32(epoch), np.int32(s)))
                    loss = float(losses[0])  # the host sync that times the batch
                    last_loss[0] = loss
                    total += loss
                    if monitor.batch_finished(loss):
                        return state
                if monitor.epoch_finished(total / spe):
                    return state
            return state

        episode = termination.run_episode(attempt, tcfg, budget, clock)
        accuracy = 0.0
        if not episode.terminated:
            state = episode.result
            correct = sum(int(progs.eval_batch(state, xb, yb, vb, hp.ema, None))
                          for xb, yb, vb in val_batches)
            accuracy = correct / len(dataset.y_val)
        return {"accuracy": accuracy, "loss": last_loss[0], "flops": counted.flops,
                "params": counted.params, "failure": episode.failure,
                "n_epoch": episode.n_epoch, "epochs": episode.epochs,
                "attempts": episode.attempts, "clamped": clamped,
                "next_epochs": episode.budget.epochs}, episode.budget

    def init(key: jax.Array) -> termination.EpochBudget:
        del key  # the first episodes' number of epochs is the config's
        return termination.EpochBudget.start(tcfg)

    def evaluate(budget: termination.EpochBudget, pipelines: list[Mapping[str, Any]],
                 key: jax.Array) -> tuple[termination.EpochBudget, list[dict[str, Any]]]:
        out = []
        for i, p in enumerate(pipelines):
            t0 = time.perf_counter()
            try:
                m, budget = one(p, i, key, budget)
            except Exception as e:  # a CNN that cannot be built is a failed pipeline
                m = {"accuracy": 0.0, "loss": float("nan"), "flops": 0.0, "params": 0,
                     "failure": f"build_error: {type(e).__name__}: {e}", "n_epoch": 0,
                     "next_epochs": budget.epochs}
            out.append({**m, "wall_time": time.perf_counter() - t0})
        return budget, out

    def replay(budget: termination.EpochBudget, metrics: list[Mapping[str, Any]]
               ) -> termination.EpochBudget:
        # Every episode's metrics name the next one's epochs; the last of the iteration's counts.
        for m in metrics:
            if m.get("next_epochs") is not None:
                budget = budget._replace(epochs=int(m["next_epochs"]))
        return budget

    log(f"layerwise {spec.name}: {spec.num_layers} layer agents, up to {tcfg.max_epochs} epochs "
        f"per episode (never below {tcfg.min_epochs}), early termination: batch time "
        f"{tcfg.batch_time or 'off'}, loss threshold {tcfg.loss_threshold:g}")
    return Evaluator(init, evaluate, replay)
