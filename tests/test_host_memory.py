"""Large host blocks freed by a worker thread are reused from the heap, not mapped anew."""

import ctypes.util
import subprocess
import sys

import pytest
from _processes import ROOT

from ma2ml_jax import host_memory

# In a fresh process: a worker thread allocates (posix_memalign) and fills a 96 MiB block, larger
# than a glibc thread arena's heap as XLA:CPU's temporary buffer of a training step is, and frees
# it; nine times, each in a new thread. Prints the minor page faults of the last eight.
_BLOCKS = """
import ctypes, ctypes.util, resource, sys, threading
from ma2ml_jax import host_memory
applied = host_memory.keep_buffers_in_heap() if sys.argv[1] == "1" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
def cycle():  # as XLA:CPU allocates a program's temporary buffer
    block = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(block), 64, ctypes.c_size_t(96 << 20)) == 0
    ctypes.memset(block, 1, 96 << 20)
    libc.free(block)
def in_a_thread():
    t = threading.Thread(target=cycle)
    t.start()
    t.join()
in_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    in_a_thread()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (96 << 20) // 4096


def _faults(apply: bool) -> tuple[bool, int]:
    r = subprocess.run([sys.executable, "-c", _BLOCKS, "1" if apply else "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={"PATH": "", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    applied, faults = r.stdout.split()
    return applied == "True", int(faults)


glibc = pytest.mark.skipif(not sys.platform.startswith("linux")
                           or "libc.so" not in (ctypes.util.find_library("c") or ""),
                           reason="glibc's arenas and mallopt")


@glibc
def test_a_freed_large_block_is_reused_instead_of_faulted_in_again():
    applied, faults = _faults(True)
    assert applied
    # Reused: the block faults in again at most when a small allocation has taken the start of
    # the freed space (then a block above it is reused).
    assert faults < 3 * PAGES
    # Without it each block is mapped anew: every page faults in again, every time.
    applied, faults = _faults(False)
    assert not applied and faults > 7 * PAGES


def test_only_a_cpu_only_jax_is_changed(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host_memory.cpu_only()
    assert not host_memory.keep_buffers_in_heap()
    monkeypatch.setenv("JAX_PLATFORMS", "CPU")
    assert host_memory.cpu_only()
    monkeypatch.delenv("JAX_PLATFORMS")
    installed = {"jax_plugins"}
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: name in installed)
    assert not host_memory.cpu_only()
    installed.clear()
    assert host_memory.cpu_only()
