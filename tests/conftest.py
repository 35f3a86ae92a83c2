"""Test set-up: several fake CPU devices so sharding code runs on a CPU-only CI machine."""

import os

# Must happen before JAX initialises its backends (flashbax / chex do the same).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
