"""Host memory for XLA:CPU: large per-call buffers reused from the heap instead of mapped anew.

XLA:CPU allocates a compiled program's temporary buffer (one block: every intermediate value of a
training step) with `posix_memalign` on each call, from the thread that runs it. In glibc a
thread's own arena cannot hold a block over its heap size (64 MiB), so such a block is always
mapped with `mmap` and unmapped when the call ends: every call then page-faults the whole block
in and zeroes it again, kernel time that on a small CPU rivals the step's own arithmetic
(docs/BENCHMARKS.md, "The main command from a cold start"). With one arena (the main heap, grown
by `brk`), no `mmap` for allocations and a high trim threshold, a freed block stays in the heap
and the next call reuses it.

`keep_buffers_in_heap` sets that with `mallopt`, on Linux with glibc, for a JAX that can only run
on the CPU, before XLA starts its threads: the command lines call it from
`config.setup_jax_for_cli`. It is a process-wide setting, so the library leaves it to them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free memory at the top of the heap kept for reuse instead of returned to the system.
TRIM_THRESHOLD = 1 << 30


def cpu_only() -> bool:
    """Whether JAX can only run on the CPU here: asked to (JAX_PLATFORMS=cpu), or no accelerator
    plugin (CUDA, ROCm: `jax_plugins`) or TPU runtime (`libtpu`) is installed.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def keep_buffers_in_heap() -> bool:
    """Keeps freed blocks of every size in the main heap for reuse (see the module docstring).

    Call it before JAX runs anything: threads that have allocated already keep their own arenas.
    Returns whether it was applied (Linux with glibc and a CPU-only JAX; elsewhere it does
    nothing).
    """
    if not sys.platform.startswith("linux") or not cpu_only():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has no such arenas
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
