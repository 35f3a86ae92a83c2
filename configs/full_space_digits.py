r"""The paper's full AUG + NAS + HPO spaces with real proxy training, sized for a 2-core CPU.

The spaces are configs/cifar10.py's (25 AutoAugment sub-policies, the NASNet normal and reduction
cell of 5 blocks, the SGD recipe with the warm-up learning rate and weight decay searched): the
221-decision search of the paper. The proxy is small: the bundled 8x8 digits, 512 training
images, 2 epochs, a 5-cell network of 8 channels trained as one masked network (one compiled
program for every architecture). The first pipeline holds the network's compilation (minutes on
a CPU, once per machine with the compilation cache); each further pipeline trains in seconds.

  python -m ma2ml_jax.train --config=configs/full_space_digits.py --workdir=runs/full
  python -m ma2ml_jax.train --config=configs/full_space_digits.py:local   # a smoke run
  python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py \
      --searchers=ma2ml,ma2ml_frozen --seeds=2            # the agents against frozen actors
"""

from configs.cifar10 import paper_cifar


def get_config(arg=None):
    c = paper_cifar("digits")
    c.data.val_size = 300
    c.data.max_train = 512
    c.search.pipelines = 8
    c.search.iterations = 6
    c.evaluate.epochs = 2
    c.evaluate.batch_size = 64
    c.evaluate.eval_batch_size = 300
    c.evaluate.network = "masked"
    c.model.cells = 5
    c.model.reduction_cells = (2, 4)  # normal, reduction, normal, reduction, normal
    c.model.cell_channels = 8
    c.retrain.top_k = 3
    c.retrain.epochs = 10
    c.retrain.report_seeds = 2
    if arg == "local":
        c.spaces.nas.num_blocks = 2
        c.search.pipelines = 2
        c.search.iterations = 2
        c.evaluate.epochs = 1
        c.data.max_train = 128
        c.model.cells = 2
        c.model.reduction_cells = (2,)
        c.retrain.top_k = 1
        c.retrain.epochs = 1
        c.retrain.report_seeds = 1
    elif arg:
        raise ValueError(f"this config takes no argument or 'local', got {arg!r}")
    return c
