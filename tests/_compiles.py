"""Counting the programs JAX compiles inside a block, through the public `jax.monitoring` API
(private caches such as a jitted function's `_cache_size()` may change with any JAX release)."""

import contextlib
import functools

import jax
import numpy as np

# JAX records this duration (jax/_src/dispatch.py: JAXPR_TO_MLIR_MODULE_EVENT, with the program's
# name as `fun_name`) each time it lowers a traced function to a new program.
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def compilations():
    """Records the programs JAX compiles inside the `with` block, by name.

    What counts is a lowering: a call that misses jit's in-memory caches traces, lowers and
    compiles a new program, and lowers even when the persistent compilation cache of conftest.py
    then supplies the executable, so a program found there still counts (the backend-compile event
    may not); a call that reuses a program records nothing. A jit nested inside a jitted function
    is part of its caller's program. Eager operations outside jit (indexing, `jax.random.key`) are
    programs too, named after their primitive: count by name, or build inputs before the block.

    Yields:
      A list that fills, in order, with the name JAX gives each program: "jit(f)" for
      `jax.jit(f)`, where f is the wrapped function's `__name__`.
    """
    _check_jax_records_lowerings()
    names = []

    def listener(event, duration, **kwargs):
        if event == LOWERING_EVENT:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@functools.cache
def _check_jax_records_lowerings():
    # Without this, a JAX release that renamed the event would make every "no new program"
    # assertion pass vacuously.
    seen = []

    def listener(event, duration, **kwargs):
        seen.append((event, kwargs.get("fun_name")))

    def fresh_function(x):  # a new function object: misses jit's in-memory caches
        return x + 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(jax.jit(fresh_function)(np.zeros(3, np.float32)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    if (LOWERING_EVENT, "jit(fresh_function)") not in seen:
        raise AssertionError(f"JAX no longer records {LOWERING_EVENT!r} when it lowers a new "
                             f"program; events recorded for a fresh jit: {seen}")
