"""The experiment config schema: every key, its default, and the checks run before any work.

Experiment files in `configs/` start from `base_config()` and change what differs, so every config
has the same keys and `--config.x=v` overrides mean the same everywhere. `validate` turns a bad
value into a `ConfigError` naming the key and the valid choices. Values derived from the config
(steps from epochs, ...) are computed by helpers here and never written back (big_vision style).
"""

from __future__ import annotations

import math

import ml_collections

from ma2ml_jax.agents import ALGORITHMS, REPEAT_AWARE
from ma2ml_jax.agents.evolution import EvolutionConfig
from ma2ml_jax.agents.lite import LiteConfig
from ma2ml_jax.agents.ma2ml import PAPER, MA2MLConfig
from ma2ml_jax.agents.qlearning import QLearningConfig
from ma2ml_jax.errors import ConfigError, choices
from ma2ml_jax.evaluate import NETWORKS
from ma2ml_jax.rewards import REWARDS
from ma2ml_jax.sharded import STEP_LOOPS
from ma2ml_jax.sharded import STRATEGIES as TRAINING_STRATEGIES
from ma2ml_jax.spaces import SPACE_FACTORIES
from ma2ml_jax.stream import MODES as STREAM_MODES

__all__ = ["ALGORITHMS", "REPEAT_AWARE", "base_config", "validate"]

# The choice lists live with the code that dispatches on them; "auto" strategy: chosen by
# evaluate.auto_candidates.
STRATEGIES = ("auto",) + TRAINING_STRATEGIES
SPACE_KINDS = tuple(SPACE_FACTORIES)


def base_config() -> ml_collections.ConfigDict:
    """All keys with CPU-sized defaults (the bundled digits data)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"  # digits | tfds:NAME[/CONFIG] | npz:PATH
    c.data.val_size = 300  # images carved from train for the search reward
    c.data.classes = 0  # > 0: seeded random class subset (ImageNet-200)
    c.data.num_classes = 0  # > 0: declared class count, labels are checked against it
    c.data.max_train = 0  # > 0: cap on the proxy training split (seeded)
    c.data.data_dir = ""  # TFDS data directory; "" = TFDS's default
    # Streaming input (stream.py): auto streams tfds: sources whose images differ in size
    # (ImageNet), decoded and cropped to image_size per batch; true: every tfds: source; false:
    # never (the whole split in memory, one image size).
    c.data.stream = "auto"
    c.data.image_size = 224  # side of streamed images; in-memory sources keep their own size
    c.data.workers = 0  # decode threads of a stream (0: one per CPU core)
    c.data.prefetch = 2  # batches a stream decodes ahead

    # One agent per ML module; each is a space kind plus that kind's arguments.
    c.spaces = ml_collections.ConfigDict()
    c.spaces.aug = ml_collections.ConfigDict({"kind": "augment", "num_subpolicies": 5,
                                              "sample_pairing": False})
    c.spaces.nas = ml_collections.ConfigDict({"kind": "macro", "variant": "tiny"})
    c.spaces.hpo = ml_collections.ConfigDict({"kind": "recipe", "variant": "tiny"})

    c.search = ml_collections.ConfigDict()
    # ma2ml (critic-screened proposals) | ma2ml_paper (the paper's Algorithm 1) | ma2ml_onpolicy
    # (its on-policy ablation) | lite (MA2ML-Lite) | random | tpe (Optuna's TPE) | qlearning |
    # evolution (regularized evolution) | local (local search with restarts)
    c.search.algorithm = "ma2ml"
    c.search.iterations = 5  # search iterations (batches of pipelines)
    c.search.pipelines = 8  # P: pipelines sampled and evaluated per iteration
    # Replace an asked pipeline whose reward is known (evaluated before, or twice in a batch) by a
    # fresh sample, and tell the learner the known reward (agents.repeats; every searcher in
    # REPEAT_AWARE: random, ma2ml*, lite, evolution, local).
    c.search.avoid_repeats = True
    c.search.checkpoint = True  # orbax checkpoint of the searcher state after every iteration
    c.search.repeat_rounds = 10  # asks for replacements before a repeat is evaluated again

    # The searchers' hyper-parameters: the fields and defaults of their config NamedTuples
    # (agents.ma2ml.MA2MLConfig, lite.LiteConfig, evolution.EvolutionConfig,
    # qlearning.QLearningConfig), where each is documented; docs/BENCHMARKS.md has the sweeps
    # behind MA2ML's and MA2ML-Lite's.
    c.ma2ml = _section(MA2MLConfig, exclude=("on_policy",))  # on_policy: search.algorithm
    # ma2ml_paper and ma2ml_onpolicy read this section, not `ma2ml`: the same keys, holding the
    # paper's settings (agents.ma2ml.PAPER); --config.ma2ml_paper.KEY=VALUE overrides one.
    c.ma2ml_paper = _section(MA2MLConfig, exclude=("on_policy",), values=PAPER)
    c.lite = _section(LiteConfig)
    c.evolution = _section(EvolutionConfig)
    c.qlearning = _section(QLearningConfig)

    # Proxy-network training that produces each pipeline's reward.
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.epochs = 2
    c.evaluate.batch_size = 64
    c.evaluate.eval_batch_size = 512
    c.evaluate.loss_threshold = 1e3  # a training loss above this (or NaN) fails the pipeline
    # Seconds of training per pipeline (0: no limit), projected from the epochs after the first
    # (which holds the compilation); a pipeline over it is stopped and fails with a penalty.
    c.evaluate.time_budget = 0.0
    # masked: one max-size network for every architecture, one compiled program per resolution;
    # exact: an exactly-shaped network compiled per architecture (the reference); auto: exact for
    # the cell space on CPU, else masked (evaluate.resolve_network gives the measured trade-off).
    c.evaluate.network = "auto"
    # How the pipelines of an iteration are trained (masked networks): loop (one at a time),
    # unrolled (the local pipelines traced into one program), vmap, map (lax.map in chunks of
    # map_chunk), sharded over devices; auto: "loop" on CPU (measured fastest there), else
    # time one chunk of each at start-up and keep the fastest (evaluate.auto_candidates).
    c.evaluate.strategy = "auto"
    c.evaluate.map_chunk = 1
    # Across steps: host (a jitted call per steps_per_call steps) or scan (an epoch in a lax.scan).
    c.evaluate.step_loop = "host"
    c.evaluate.steps_per_call = 1

    # Network settings that are not searched.
    c.model = ml_collections.ConfigDict()
    c.model.cells = 17  # cell space: number of cells
    # cell space: 1-based positions of the reduction cells; (6, 12) is the paper's "5th and 11th"
    # read as 0-based indices (spaces/cell.py, CIFAR_CELL_LAYOUT)
    c.model.reduction_cells = (6, 12)
    c.model.cell_channels = 16  # cell space: channels of the first cell

    c.reward = ml_collections.ConfigDict()
    # accuracy | mnas: Acc*(FLOPs/T)^w | linear: cA*Acc - cS*SizeMB |
    # iranfar: -1 if terminated else cA*Acc%/N_epoch - cS*SizeMB (Iranfar eq. 2, cA + cS = 1)
    c.reward.kind = "accuracy"
    c.reward.flops_target = 600e6  # mnas: the FLOPs constraint T
    # > 0: the FLOPs metric (the mnas reward, the logs, the retraining budgets) counts the
    # classifier with this many outputs instead of the data's, so that T and the budgets keep the
    # meaning they have for the network as deployed (ImageNet-200's proxy: 1000, configs/
    # imagenet200.py); parameters stay those of the network trained.
    c.reward.flops_classes = 0
    c.reward.w = -0.07  # mnas: the exponent w
    c.reward.acc_weight = 1.0  # linear: cA
    c.reward.size_weight = 0.0  # linear: cS per MB of float32 parameters
    c.reward.failure = 0.0  # reward of a pipeline that failed (NaN loss, over threshold, ...)

    # Early termination of layerwise episodes (termination.py; Iranfar Sec. V-E and VI-A).
    # evaluate.epochs is the first episodes' number of epochs (10 in the paper).
    c.termination = ml_collections.ConfigDict()
    c.termination.batch_time = 0.0  # t_th: seconds per training batch (0: off)
    c.termination.batch_patience = 5  # N_th,t: consecutive slow batches -> -1 at once
    c.termination.loss_threshold = 2.0  # l_th: epoch training loss (also sets N_epoch)
    c.termination.loss_patience = 2  # N_th,l: consecutive epochs over l_th -> restart, then -1
    c.termination.loss_retries = 1  # restarts before the penalty
    c.termination.min_epochs = 3  # the automatic number of epochs never goes below this
    c.termination.untimed_batches = 1  # first batches of an attempt (compilation) not timed

    # Retraining of the top-k pipelines after the search (retrain.py; Algorithm 1, lines 14-16).
    c.retrain = ml_collections.ConfigDict()
    c.retrain.top_k = 3
    c.retrain.epochs = 10
    c.retrain.seeds = 2  # selection runs per top-k pipeline, measured on the validation split
    # Fresh runs of each selected pipeline, measured on test: the reported mean and std. The
    # paper trains its selected pipeline "for 5 trials" (Section 4.2).
    c.retrain.report_seeds = 5
    c.retrain.max_train = 0  # > 0: seeded cap on each run's training images (train [+ val])
    # exact: an exactly-shaped network per architecture (one compile, amortized over a long
    # training run); masked: the search's max-size network; auto: exact.
    c.retrain.network = "auto"
    # FLOPs budgets of the constrained table (the paper's 500M/600M/700M); () with
    # reward.kind='mnas': flops_target x (5/6, 1, 7/6).
    c.retrain.flops_budgets = ()
    return c


def _section(cls, exclude: tuple[str, ...] = (), values=None) -> ml_collections.ConfigDict:
    """A config section holding a searcher's config NamedTuple: `values` or the defaults."""
    fields = values._asdict() if values is not None else cls._field_defaults
    return ml_collections.ConfigDict({k: v for k, v in fields.items() if k not in exclude})


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks values (types are checked by ConfigDict); raises ConfigError naming the key."""
    if config.search.algorithm not in ALGORITHMS:
        raise ConfigError(f"search.algorithm={config.search.algorithm!r} is not one of "
                          f"{choices(ALGORITHMS)}")
    if config.search.repeat_rounds < 0:
        raise ConfigError(f"search.repeat_rounds={config.search.repeat_rounds} must be >= 0")
    if config.reward.kind not in REWARDS:
        raise ConfigError(f"reward.kind={config.reward.kind!r} is not one of {choices(REWARDS)}")
    for key in ("search.iterations", "search.pipelines", "evaluate.epochs",
                "evaluate.batch_size", "evaluate.eval_batch_size"):
        section, name = key.split(".")
        if config[section][name] < 1:
            raise ConfigError(f"{key}={config[section][name]} must be >= 1")
    if config.evaluate.network not in NETWORKS:
        raise ConfigError(f"evaluate.network={config.evaluate.network!r} is not one of "
                          f"{choices(NETWORKS)}")
    if config.evaluate.strategy not in STRATEGIES:
        raise ConfigError(f"evaluate.strategy={config.evaluate.strategy!r} is not one of "
                          f"{choices(STRATEGIES)}")
    if config.evaluate.step_loop not in STEP_LOOPS:
        raise ConfigError(f"evaluate.step_loop={config.evaluate.step_loop!r} is not one of "
                          f"{choices(STEP_LOOPS)}")
    if not config.evaluate.time_budget >= 0:
        raise ConfigError(f"evaluate.time_budget={config.evaluate.time_budget} must be >= 0 "
                          "(0: no limit)")
    for key in ("steps_per_call", "map_chunk"):
        if config.evaluate[key] < 1:
            raise ConfigError(f"evaluate.{key}={config.evaluate[key]} must be >= 1")
    if config.data.val_size < 1:
        raise ConfigError(f"data.val_size={config.data.val_size} must be >= 1")
    _validate_stream(config.data)
    _validate_retrain(config.retrain)
    if config.reward.flops_classes < 0:
        raise ConfigError(f"reward.flops_classes={config.reward.flops_classes} must be >= 0 "
                          "(0: the data's class count)")
    if config.reward.kind == "mnas" and not config.reward.flops_target > 0:
        raise ConfigError("reward.flops_target must be > 0 for reward.kind='mnas'")
    if config.reward.kind == "iranfar" and not math.isclose(
            config.reward.acc_weight + config.reward.size_weight, 1.0, abs_tol=1e-9):
        raise ConfigError(f"reward.acc_weight + reward.size_weight must be 1 for "
                          f"reward.kind='iranfar' (cA + cS = 1, eq. 2), got "
                          f"{config.reward.acc_weight} + {config.reward.size_weight}")
    if not config.spaces:
        raise ConfigError("spaces is empty: at least one agent space is needed")
    for agent, spec in config.spaces.items():
        kind = spec.get("kind")
        if kind not in SPACE_KINDS:
            raise ConfigError(f"spaces.{agent}.kind={kind!r} is not one of {choices(SPACE_KINDS)}")
    kinds = [spec.kind for spec in config.spaces.values()]
    if "layerwise" in kinds:
        _validate_layerwise(config)
        return
    for kind in kinds:
        if kind != "choices" and kinds.count(kind) > 1:  # a user's own agents share a kind
            raise ConfigError(f"two agents use space kind {kind!r}; each module is one agent")
    if "macro" in kinds and "cell" in kinds:
        raise ConfigError("spaces has both a 'macro' and a 'cell' architecture; pick one")
    if "cell" in kinds:
        from ma2ml_jax.spaces import cell

        try:
            cell.check_reduction_cells(config.model.cells, config.model.reduction_cells)
        except ValueError as e:
            raise ConfigError(f"model.{e}") from e


def _validate_stream(d: ml_collections.ConfigDict) -> None:
    # A config saved before streaming existed (retrain.py rebuilds one) lacks these keys.
    if d.get("stream", "auto") not in STREAM_MODES:
        raise ConfigError(f"data.stream={d.stream!r} is not one of {choices(STREAM_MODES)}")
    for key, low in (("image_size", 1), ("workers", 0), ("prefetch", 1)):
        if d.get(key, low) < low:
            raise ConfigError(f"data.{key}={d[key]} must be >= {low}")


def _validate_retrain(r: ml_collections.ConfigDict) -> None:
    for key in ("top_k", "epochs", "seeds", "report_seeds"):
        if r[key] < 1:
            raise ConfigError(f"retrain.{key}={r[key]} must be >= 1")
    if r.max_train < 0:
        raise ConfigError(f"retrain.max_train={r.max_train} must be >= 0 (0: the whole split)")
    if r.network not in NETWORKS:
        raise ConfigError(f"retrain.network={r.network!r} is not one of {choices(NETWORKS)}")
    if any(not b > 0 for b in r.flops_budgets):
        raise ConfigError(f"retrain.flops_budgets={tuple(r.flops_budgets)} must all be > 0")


def _validate_layerwise(config: ml_collections.ConfigDict) -> None:
    """A layerwise space is the whole pipeline: every layer of one variant, one agent each."""
    from ma2ml_jax.spaces import layerwise

    others = sorted(f"spaces.{a}.kind={s.kind!r}" for a, s in config.spaces.items()
                    if s.kind != "layerwise")
    if others:
        raise ConfigError(f"a 'layerwise' space is the whole pipeline (one agent per layer of a "
                          f"CNN) and cannot be mixed with other kinds: {', '.join(others)}")
    variants = sorted({str(s.get("variant")) for s in config.spaces.values()})
    if len(variants) != 1:
        raise ConfigError(f"the layerwise agents name different variants {variants}; use one")
    try:
        spec = layerwise.get_spec(variants[0])
    except ValueError as e:
        raise ConfigError(f"spaces: {e}") from e
    want = {layerwise.agent_name(i): i for i in range(spec.num_layers)}
    got = {a: s.get("layer") for a, s in config.spaces.items()}
    if got != want:
        bad = sorted(a for a in set(want) | set(got) if got.get(a, -1) != want.get(a))
        raise ConfigError(f"layerwise variant {variants[0]!r} needs the agents layer00 .. "
                          f"{layerwise.agent_name(spec.num_layers - 1)}, each with its layer "
                          f"index (layerwise_spaces_config(variant) writes them); wrong or "
                          f"missing: {', '.join(bad[:5])}")
    epochs = config.evaluate.epochs
    t = config.termination
    if epochs != int(epochs) or epochs < t.min_epochs:
        raise ConfigError(f"evaluate.epochs={epochs} (the first episodes' epochs) must be an "
                          f"integer >= termination.min_epochs={t.min_epochs}")
    from ma2ml_jax import termination

    try:
        termination.from_config(t, max_epochs=int(epochs))
    except ValueError as e:
        raise ConfigError(f"termination.{e}") from e


def setup_jax_for_cli() -> None:
    """What the command lines (train, retrain) set before JAX computes anything."""
    import logging
    import os

    import jax

    from ma2ml_jax import host_memory

    # Before XLA starts its threads: each training step's temporary buffer is reused from the
    # heap instead of mapped and page-faulted anew on every call (CPU-only JAX on glibc).
    host_memory.keep_buffers_in_heap()
    # absl shows INFO logs; JAX's "no TPU/GPU backend found" lines are noise for a CPU user.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # orbax logs every checkpoint at INFO through absl; the search reports its own progress.
    logging.getLogger("absl").setLevel(logging.WARNING)
    # Compiled programs are reused across runs (fixed shapes, recipes as arrays), in the cache
    # JAX_COMPILATION_CACHE_DIR names if it is set, else MA2ML_JAX_CACHE or ~/.cache/ma2ml_jax.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(
            os.environ.get("MA2ML_JAX_CACHE", "~/.cache/ma2ml_jax")))
