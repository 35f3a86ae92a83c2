r"""Default: a small search on the bundled 8x8 digits data, sized for a 2-core CPU (< 5 minutes).

  python -m ma2ml_jax.train                                   # this config
  python -m ma2ml_jax.train --config=configs/default.py:local # a ~30 s smoke run (tests use it)
  python -m ma2ml_jax.train --config.search.iterations=10     # override any key
"""

from ma2ml_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    if arg == "local":
        c.search.iterations = 2
        c.search.pipelines = 4
        c.evaluate.epochs = 3
        c.evaluate.batch_size = 32
        c.data.max_train = 512
    elif arg:
        raise ValueError(f"configs/default.py takes no argument or 'local', got {arg!r}")
    return c
