"""One search over several hosts (a TPU pod slice, a multi-node GPU job): every host runs the
same command; `jax.distributed` joins them and the pipeline mesh spans every device of every host.

Roles. Process 0 (the primary) runs the searcher and owns the workdir: the config, the trial log,
TensorBoard scalars, the orbax checkpoints and all console output. Every process loads the same
data and builds the same evaluator; each iteration the primary sends the pipelines to train
(`Channel`), all processes train them together in one sharded program (each host its share of
the pipeline axis, `sharded.py`), and the results come back to every host (`to_host`). The
searcher's state is small and host-side, so it lives on the primary alone: the other hosts need
neither the workdir nor the searcher, which is why a pod slice's workdir can be a local disk of
worker 0. Decisions taken from wall-clock time (evaluate.time_budget, evaluate.strategy=auto) are
the primary's, broadcast, so that every host runs the same programs. Pipelines that cannot share
a sharded program (exact per-architecture networks, which train with the "loop" strategy, and the
layerwise networks of Iranfar et al.) are trained by every process alone: correct, not faster.
A search given an `objective` evaluates it on process 0 only. `retrain` and `report` are
single-host commands.

    initialize("auto")   # before any JAX computation: joins the other processes, if any
    is_primary()         # process 0 (always True in a single-process run)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from ma2ml_jax.errors import UserError

MODES = ("auto", "true", "false")
# Environment variables of a hand-made cluster (jax reads the first itself).
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(mode: str = "auto") -> bool:
    """Joins the other processes of a multi-process run; returns whether it did.

    "true": `jax.distributed.initialize()`, which finds the hosts by itself on Cloud TPU, Slurm
    and Open MPI, or from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
    "auto": the same when JAX_COORDINATOR_ADDRESS is set, else a single-process run;
    "false": a single-process run. Must come before any JAX computation.
    """
    if mode not in MODES:
        raise UserError(f"--distributed={mode!r}: valid values are {', '.join(MODES)}")
    if mode == "false" or (mode == "auto" and not os.environ.get(ENV[0])):
        return False
    kwargs = {}
    try:
        if os.environ.get(ENV[1]):
            kwargs["num_processes"] = int(os.environ[ENV[1]])
        if os.environ.get(ENV[2]):
            kwargs["process_id"] = int(os.environ[ENV[2]])
    except ValueError as e:
        raise UserError(f"{ENV[1]} and {ENV[2]} must be integers: {e}") from e
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        reason = str(e).splitlines()[0].rstrip(".")
        raise UserError(
            f"jax.distributed.initialize() failed: {reason}. On a Cloud TPU pod "
            "slice, Slurm or Open MPI the hosts are found automatically; elsewhere set "
            f"{', '.join(ENV)} on every process (or run with --distributed=false)") from e
    return True


def is_primary() -> bool:
    return jax.process_index() == 0


def multiprocess() -> bool:
    return jax.process_count() > 1


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """A (possibly multi-host) array as one numpy array on every host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        barrier()
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def broadcast(tree: Any) -> Any:
    """The primary's values of a pytree of arrays (same shapes on every host) on every host."""
    if not multiprocess():
        return tree
    from jax.experimental import multihost_utils

    barrier()
    return multihost_utils.broadcast_one_to_all(tree)


BARRIER_TIMEOUT_S = 3600
_barriers = 0


def barrier() -> None:
    """Waits until every process is here, through the coordination service (no collective).

    Called before each of this module's collectives: a process may arrive minutes after the
    others (it compiled a program they read from the compilation cache), and setting up a
    collective gives up sooner than that (Gloo on CPU after 30 s).
    """
    global _barriers
    if not multiprocess():
        return
    from jax._src import distributed as jax_distributed  # its client, as orbax uses it

    client = jax_distributed.global_state.client
    if client is None:  # pragma: no cover - processes set up by something else than jax
        return
    _barriers += 1  # every process calls the collectives in the same order
    client.wait_at_barrier(f"ma2ml_jax_barrier_{_barriers}", BARRIER_TIMEOUT_S * 1000)


def broadcast_json(obj: Any = None) -> Any:
    """The primary's JSON-serializable `obj` on every host (the others' `obj` is ignored).

    Two broadcasts: the length, then the bytes padded to a power of two (each length compiles
    its own small program; powers of two keep those few).
    """
    if not multiprocess():
        return obj
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_primary() else None
    n = int(broadcast(np.int32(len(data) if data is not None else 0)))
    buf = np.zeros(1 << max(n - 1, 0).bit_length(), np.uint8)
    if data is not None:
        buf[:n] = data
    return json.loads(bytes(np.asarray(broadcast(buf))[:n]))


class Channel:
    """The primary's messages to the other processes, one per search iteration.

    The primary calls `send(iteration, tokens)` before it evaluates an iteration, then
    `finish(result)` or, if it stops on an error, `abort()`; the others call `receive()` until it
    returns None (finished; `result()` is then the primary's result) and raise if it aborted.
    In a single-process run every call is a no-op.
    """

    # Set by the primary while every process is inside the same collective training: a message
    # then would not meet the others' `receive`.
    evaluating = False
    finished = False

    def send(self, iteration: int, tokens: dict[str, np.ndarray]) -> None:
        broadcast_json({"go": 1, "iteration": iteration,
                        "tokens": {a: np.asarray(v).tolist() for a, v in tokens.items()}})

    def finish(self, result: Any) -> None:
        broadcast_json({"go": 0, "result": result})
        self.finished = True

    def abort(self) -> None:
        """Tells the others to stop, unless they cannot hear it (finished, or training)."""
        if multiprocess() and not self.evaluating and not self.finished:
            broadcast_json({"go": -1})
            self.finished = True

    def receive(self) -> tuple[int, dict[str, np.ndarray]] | None:
        msg = broadcast_json()
        if msg["go"] == 1:
            return msg["iteration"], {a: np.asarray(v, np.int32)
                                      for a, v in msg["tokens"].items()}
        if msg["go"] == 0:
            self._result = msg["result"]
            return None
        raise UserError("process 0 stopped with an error (its output says why); this process "
                        "stops too")

    def result(self) -> Any:
        return self._result
