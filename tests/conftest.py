"""Test set-up: several fake CPU devices so sharding code runs on a CPU-only CI machine, and a
persistent compilation cache for the session, so that the many tests that build the same
searcher or proxy network again (a resumed search is a new process in real use) compile it once.
"""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends (flashbax / chex do the same). Tiny shapes make
# the suite compile-bound: LLVM's optimization level 0 compiles the CPU programs faster (the
# proxy network's sharded train step: 25 s -> 16 s, the `jit(unrolled)` line of
# `JAX_LOG_COMPILES=1 python -m ma2ml_jax.train --config=configs/default.py:local
# --config.search.iterations=1 --config.search.pipelines=3 --config.evaluate.strategy=unrolled`
# on 4 fake devices, without and with the flag) and leaves XLA's own passes as they are.
# Subprocesses (the CLI, two-process runs, the notebook) inherit both flags.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ma2ml_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
