r"""The paper's CIFAR-100 setting: as CIFAR-10 (configs/cifar10.py), 4,008 pipelines searched.

  python -m ma2ml_jax.train --config=configs/cifar100.py --workdir=runs/cifar100
  python -m ma2ml_jax.train --config=configs/cifar100.py:local   # tiny CPU variant

The searcher is the project's default, `ma2ml` (critic-screened proposals); the paper's
Algorithm 1 instead:

  python -m ma2ml_jax.train --config=configs/cifar100.py --workdir=runs/cifar100_paper \
      --config.search.algorithm=ma2ml_paper

Data: TFDS's cifar100, prepared by `python -m ma2ml_jax.prepare cifar100` (":local" too), or
any npz file of CIFAR-100's arrays with --config.data.source=npz:PATH.
"""

from configs.cifar10 import paper_cifar


def get_config(arg=None):
    c = paper_cifar("tfds:cifar100", arg)
    if not arg:
        c.search.iterations = 167  # 4,008 pipelines on CIFAR-100 in the paper
    return c
