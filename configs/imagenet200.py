r"""The paper's ImageNet-200 setting (MA2ML, CVPR 2023, Section 4.1; FBNetV3's proxy task).

200 seeded random ImageNet classes, 10K validation images taken from train; AUG: 25 sub-policies;
NAS: the FBNetV3 inverted-residual space; HPO: the FBNetV3 recipe space; 24 pipelines per iteration
(1,992 in total), 100 proxy epochs; reward Acc * (FLOPs / 600M)^-0.07; top 20 retrained (400 epochs
on all of ImageNet in the paper).

Needs imagenet2012 prepared for TFDS (manual download) in --config.data.data_dir.

  python -m ma2ml_jax.train --config=configs/imagenet200.py --workdir=runs/in200
  python -m ma2ml_jax.train --config=configs/imagenet200.py:local   # tiny CPU variant (CIFAR-10)
"""

from ma2ml_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.source = "tfds:imagenet2012"
    c.data.classes = 200
    c.data.val_size = 10_000
    c.spaces.aug.num_subpolicies = 25
    c.spaces.nas.variant = "imagenet"
    c.spaces.hpo.variant = "imagenet"
    c.search.pipelines = 24
    c.search.iterations = 83  # 1,992 pipelines
    c.evaluate.epochs = 100
    c.evaluate.batch_size = 256
    c.reward.kind = "mnas"
    c.reward.flops_target = 600e6
    c.reward.w = -0.07
    c.retrain.top_k = 20
    c.retrain.epochs = 400
    c.retrain.seeds = 1
    if arg == "local":
        # The same spaces and reward on small 32x32 data that a CPU can train.
        c.data.source = "tfds:cifar10"
        c.data.classes = 5
        c.data.val_size = 500
        c.data.max_train = 1024
        c.spaces.aug.num_subpolicies = 5
        c.spaces.nas.variant = "cifar"
        c.search.pipelines = 4
        c.search.iterations = 2
        c.evaluate.epochs = 1
        c.evaluate.batch_size = 64
        c.reward.flops_target = 20e6
        c.retrain.top_k = 2
        c.retrain.epochs = 2
    elif arg:
        raise ValueError(f"this config takes no argument or 'local', got {arg!r}")
    return c
