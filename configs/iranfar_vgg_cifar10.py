r"""Iranfar et al.'s per-layer multi-agent Q-learning on a VGG-like CNN for CIFAR-10 (IEEE TCAD).

One Q-learning agent per layer of a fixed VGG-like network (`spaces/layerwise.py`, variant
"vgg_small": conv-pool x 3 and a dense layer, 7 agents), picking (kernels, kernel size, stride),
pool sizes and the dense width; reward eq. 2 (-1 on early termination, else
cA * Acc% / N_epoch - cS * SizeMB with cA = cS = 0.5); early termination on batch time and epoch
loss; the epochs per episode found automatically from 10 down to no fewer than 3 (Sec. VI-A).
Table II's batch size 128 and SGD. One episode per iteration, as the paper's sequential episodes
(the layerwise evaluator trains one CNN at a time anyway).

The ":vgg16" argument searches Table III's VGG-16 space (19 agents, 400 exploration episodes at
least; the paper ran 500, then about 300 of exploration-exploitation). ":local" (alone or after
":vgg16") shrinks either.

  python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py --workdir=runs/iranfar
  python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:vgg16
  python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:local   # tiny CPU variant
  python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:vgg16:local
  # real CIFAR-10 without TFDS (":local" too): python ../shared/data/cifar10.py --out
  #   /tmp/cifar10.npz, then --config.data.source=npz:/tmp/cifar10.npz
"""

from ma2ml_jax.config import base_config
from ma2ml_jax.spaces.layerwise import layerwise_spaces_config

DATASET = "tfds:cifar10"


VARIANTS = ("vgg16", "local")


def get_config(arg=None):
    variants = arg.split(":") if arg else []
    if any(v not in VARIANTS for v in variants) or len(set(variants)) != len(variants):
        raise ValueError(f"this config takes no argument, 'local', 'vgg16' or 'vgg16:local', "
                         f"got {arg!r}")
    variant = "vgg16" if "vgg16" in variants else "vgg_small"
    c = base_config()
    c.data.source = DATASET
    c.data.val_size = 10_000
    c.spaces = layerwise_spaces_config(variant)
    c.search.algorithm = "qlearning"
    c.search.pipelines = 1
    # vgg_small: the largest Q-table has 12 x 2 cells; 100 exploration episodes, then
    # exploitation while epsilon = 0.99^n decays.
    c.search.iterations = 400
    c.qlearning.min_exploration = 100
    c.evaluate.epochs = 10  # the first episodes' epochs (Sec. VI-A, as MetaQNN)
    c.evaluate.batch_size = 128  # Table II
    c.reward.kind = "iranfar"
    c.reward.acc_weight = 0.5
    c.reward.size_weight = 0.5
    c.termination.loss_threshold = 1.6  # CIFAR-10 cross-entropy (chance: 2.30)
    c.termination.loss_patience = 2
    c.termination.batch_time = 1.0  # seconds per batch of 128; hardware dependent
    c.termination.batch_patience = 10
    if variant == "vgg16":
        c.search.iterations = 800
        c.qlearning.min_exploration = 500  # Sec. VIII-D: 500 (the minimum is 20 x 20 = 400)
    if "local" in variants:
        c.data.val_size = 500
        c.data.max_train = 1024
        c.search.iterations = 3
        c.search.pipelines = 2
        c.qlearning.min_exploration = 0
        c.evaluate.epochs = 3
        c.evaluate.batch_size = 64
        c.termination.loss_threshold = 2.25
        c.termination.batch_time = 5.0
        if variant == "vgg16":  # VGG-16's 13 convolutions: two episodes on a quarter of the data
            c.search.iterations = 2
            c.search.pipelines = 1
            c.data.max_train = 256
            c.data.val_size = 128
    return c
