"""Every config's `:local` variant runs end to end through the command line.

CI has no network and no ../shared data, so the CIFAR-shaped configs read random uint8 images
written here (`--config.data.source=npz:...`): a smoke run needs the shapes, not the content.
default.py reads its bundled digits. Each run is a fresh process with the user's XLA settings
(one CPU device). They take minutes each on a 2-core machine (docs/BENCHMARKS.md, "The tiny
`:local` variants"), too long for the default suite: CI runs them as their own step
(`.ci/run`: ``python -m pytest -q -m slow tests/test_configs_local.py``).
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from _processes import ROOT, read_log

from ma2ml_jax import cli

pytestmark = pytest.mark.slow

# config:arg, and the classes of the CIFAR-shaped data it reads (0: its own bundled data)
LOCAL = [
    ("configs/default.py:local", 0),
    ("configs/cifar10.py:local", 10),
    ("configs/cifar100.py:local", 100),
    ("configs/imagenet200.py:local", 10),
    ("configs/imagenet200.py:flops900:local", 10),
    ("configs/iranfar_vgg_cifar10.py:local", 10),
    ("configs/full_space_digits.py:local", 0),
]


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """npz files of random 32x32x3 uint8 images: {classes: path}, 2,000 train and 200 test."""
    rng = np.random.default_rng(0)
    paths = {}
    for classes in (10, 100):
        path = tmp_path_factory.mktemp("data") / f"random{classes}.npz"
        np.savez(path, x_train=rng.integers(0, 256, (2000, 32, 32, 3), np.uint8),
                 y_train=np.arange(2000) % classes,
                 x_test=rng.integers(0, 256, (200, 32, 32, 3), np.uint8),
                 y_test=np.arange(200) % classes)
        paths[classes] = path
    return paths


@pytest.mark.parametrize("spec, classes", LOCAL, ids=[s for s, _ in LOCAL])
def test_local_variant_runs_end_to_end(spec, classes, cifar_like, tmp_path):
    config = cli.load_config(spec, root=ROOT)
    data = [f"--config.data.source=npz:{cifar_like[classes]}"] if classes else []
    workdir = tmp_path / "run"
    env = dict(os.environ)  # with the session's compilation cache (tests/conftest.py)
    env.pop("XLA_FLAGS", None)  # as a user runs it: one CPU device, XLA's default optimisation
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ma2ml_jax.train", f"--config={spec}", *data,
                        f"--workdir={workdir}", "--noprogress"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    n = config.search.iterations * config.search.pipelines
    assert f"Best pipeline of {n} evaluated" in r.stdout, r.stdout[-3000:]
    trials = read_log(workdir)
    assert len(trials) == n
    assert any(not t["failure"] for t in trials), trials
    print(f"{spec}: {seconds:.0f} s end to end")
