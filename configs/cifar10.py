r"""The paper's CIFAR-10 setting (MA2ML, CVPR 2023, Section 4.2).

AUG: 25 AutoAugment sub-policies; NAS: NASNet normal + reduction cell, 17 cells with reduction cells
at 1-based positions 6 and 12 (5 normal cells before, between and after them); HPO: SGD with the
warm-up learning rate and weight decay searched (4 values each). 24 pipelines per iteration, 12
proxy epochs each, 10K validation images held out of train, top 30 pipelines retrained (600 epochs
in the paper).

  python -m ma2ml_jax.train --config=configs/cifar10.py --workdir=runs/cifar10
  python -m ma2ml_jax.train --config=configs/cifar10.py:local   # tiny CPU variant

The searcher is the project's default, `ma2ml`: MA2ML's agents with critic-screened proposals
(README's searcher table), not the paper's Algorithm 1. The paper's algorithm (P samples of the
policies evaluated, agents.ma2ml.PAPER) on the same setting:

  python -m ma2ml_jax.train --config=configs/cifar10.py --workdir=runs/cifar10_paper \
      --config.search.algorithm=ma2ml_paper

Data: TFDS's cifar10, prepared by `python -m ma2ml_jax.prepare cifar10` (":local" too); without
TFDS, `python ../shared/data/cifar10.py --out /tmp/cifar10.npz` writes CIFAR-10 as arrays (its
images re-encoded as JPEG) for --config.data.source=npz:/tmp/cifar10.npz.
"""

from ma2ml_jax.config import base_config

DATASET = "tfds:cifar10"


def get_config(arg=None):
    return paper_cifar(DATASET, arg)


def paper_cifar(source, arg=None):
    c = base_config()
    c.data.source = source
    c.data.val_size = 10_000
    c.spaces.aug.num_subpolicies = 25
    c.spaces.nas = {"kind": "cell", "num_blocks": 5}
    c.spaces.hpo.variant = "cifar"
    c.search.pipelines = 24
    c.search.iterations = 209  # 5,016 pipelines on CIFAR-10 in the paper
    c.evaluate.epochs = 12
    c.evaluate.batch_size = 128
    c.model.cells = 17
    # The paper's "the 5th and 11th are reduction cells" read as DARTS' 0-based indices
    # (layers // 3, 2 * layers // 3): 5 normal cells before, between and after them, NASNet's
    # 3N + 2 layout with N = 5 (spaces/cell.py, CIFAR_CELL_LAYOUT); the key is 1-based.
    c.model.reduction_cells = (6, 12)
    c.model.cell_channels = 16
    c.retrain.top_k = 30
    c.retrain.epochs = 600
    c.retrain.seeds = 1  # one selection run per top-30 pipeline, on the validation split
    c.retrain.report_seeds = 5  # the selected pipeline's fresh trials (the paper's 5)
    if arg == "local":
        # Minutes on a 2-core CPU (docs/BENCHMARKS.md, "The tiny :local variants"). There each
        # architecture trains in its own exactly-shaped network (evaluate.resolve_network), so
        # the run costs about one compilation per pipeline: few pipelines, small programs.
        c.data.val_size = 256
        c.data.max_train = 256
        c.spaces.aug.num_subpolicies = 5
        c.spaces.nas.num_blocks = 2
        c.search.pipelines = 2
        c.search.iterations = 2
        c.evaluate.epochs = 1
        c.evaluate.eval_batch_size = 256
        c.model.cells = 2
        c.model.reduction_cells = (2,)  # a normal cell, then a reduction cell
        c.model.cell_channels = 8
        c.retrain.top_k = 2
        c.retrain.epochs = 2
        c.retrain.seeds = 1
    elif arg:
        raise ValueError(f"this config takes no argument or 'local', got {arg!r}")
    return c
