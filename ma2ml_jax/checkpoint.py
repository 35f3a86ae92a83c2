"""Searcher checkpoints with orbax's CheckpointManager, in step with the trial log.

After every iteration the driver saves the searcher state (policies, target policies, critic,
optimizer states, replay buffer, random keys, iteration: whatever pytree the searcher keeps), the
driver's repeat counters and the evaluator's state (`evaluator.Evaluator`: the layerwise
evaluator's epochs per episode; nothing for an evaluator without state) under
`workdir/checkpoints/<iteration>`. On resume it restores the newest checkpoint not ahead of the
trial log and replays only the logged iterations after it through ask/tell and the evaluator's
`replay` (usually none; one when a kill fell between the log write and the save).

In a multi-process run (a TPU pod slice) the searcher runs on process 0 alone, which saves and
restores its checkpoints without the other processes (orbax's `active_processes={0}`).

A searcher whose state is not a pytree of arrays (TPE keeps an Optuna study) is not saved: its
resume replays the whole log, which rebuilds the same state (see `search`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

DIRECTORY = "checkpoints"
_KEY_MARK = "__prng_key__"


def checkpointable(state: Any) -> bool:
    """True when every leaf of `state` is an array (or a Python/numpy scalar)."""
    return all(isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, bool))
               for x in jax.tree.leaves(state))


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(state: Any) -> Any:
    """Host numpy arrays; typed PRNG keys become their raw key data."""
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if _is_key(x)
                        else np.asarray(x), state)


def from_savable(saved: Any, like: Any) -> Any:
    """Inverse of `to_savable`, given a state of the same structure (`searcher.init(...)`)."""
    def restore(x, ref):
        if _is_key(ref):
            return jax.random.wrap_key_data(np.asarray(x), impl=jax.random.key_impl(ref))
        if isinstance(ref, jax.Array):
            return jax.numpy.asarray(x, ref.dtype)
        if isinstance(ref, np.ndarray | np.generic):
            return np.asarray(x, ref.dtype)
        return type(ref)(np.asarray(x))
    return jax.tree.map(restore, saved, like)


class SearchCheckpoints:
    """`workdir/checkpoints/<step>`, step = iterations completed; keeps the newest two."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.path.join(workdir, DIRECTORY))
        # The searcher's state lives on process 0 alone (`distributed.py`): in a multi-process
        # run only it saves and restores, so orbax must not wait for the other processes.
        multiprocessing = (ocp.options.MultiprocessingOptions(primary_host=0,
                                                              active_processes={0})
                           if jax.process_count() > 1 else ocp.options.MultiprocessingOptions())
        os.makedirs(self.directory, exist_ok=True)  # orbax cannot with `active_processes`
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                                 enable_async_checkpointing=False,
                                                 multiprocessing_options=multiprocessing),
            # Given up front: without it a new manager cannot read a saved tree's structure
            # (`item_metadata`, which `restore` asks whether the evaluator state is there).
            item_handlers=ocp.StandardCheckpointHandler(multiprocessing_options=multiprocessing))

    def latest_step(self, at_most: int) -> int | None:
        steps = [s for s in self.manager.all_steps() if s <= at_most]
        return max(steps) if steps else None

    def save(self, step: int, state: Any, counters: dict[str, int],
             evaluator_state: Any = ()) -> None:
        item = {"searcher": to_savable(state),
                "counters": {k: np.asarray(v, np.int64) for k, v in counters.items()}}
        if jax.tree.leaves(evaluator_state):  # an evaluator without state adds nothing
            item["evaluator"] = to_savable(evaluator_state)
        self.manager.save(step, args=self._ocp.args.StandardSave(item), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like_state: Any, counters: dict[str, int],
                like_evaluator: Any = ()) -> tuple[Any, dict[str, int], Any]:
        """(searcher state, counters, evaluator state) saved at `step`, shaped as the `like_*`.

        The evaluator state is `like_evaluator` itself when it is empty, and None when the
        checkpoint holds none: the caller rebuilds it from the trial log then.
        """
        like = {"searcher": to_savable(like_state),
                "counters": {k: np.asarray(v, np.int64) for k, v in counters.items()}}
        has_evaluator = bool(jax.tree.leaves(like_evaluator))
        saved_evaluator = has_evaluator and "evaluator" in self.manager.item_metadata(step).keys()
        if saved_evaluator:
            like["evaluator"] = to_savable(like_evaluator)
        got = self.manager.restore(step, args=self._ocp.args.StandardRestore(like))
        evaluator_state = (from_savable(got["evaluator"], like_evaluator) if saved_evaluator
                           else None if has_evaluator else like_evaluator)
        return (from_savable(got["searcher"], like_state),
                {k: int(v) for k, v in got["counters"].items()}, evaluator_state)

    def close(self) -> None:
        self.manager.close()
