r"""Retraining after the search (Algorithm 1, lines 14-16): select on validation, report on test.

  python -m ma2ml_jax.retrain --workdir=runs/mine --top_k=3
  python -m ma2ml_jax.retrain --workdir=runs/mine --top_k=20 --seeds=1 --report_seeds=5 \
      --epochs=400 --flops_budgets=500e6,600e6,700e6

Reads the search's `config.json` and `trials.jsonl` from the workdir, picks the k pipelines of
the highest search reward (failed ones left out, a pipeline evaluated several times counted
once), and retrains them with their whole recipe (augmentation policy, architecture and training
recipe) through the evaluator's own code path (`evaluate.make_evaluator`) for `retrain.epochs`
epochs, in two phases whose evidence is disjoint:

1. Selection. Each top-k pipeline trains on the search's training split, with its validation
   images (`data.val_size`) held out, and is measured on that validation split, once per
   selection seed 0 .. seeds-1. Selected are the pipeline of the highest mean validation
   accuracy and, per FLOPs budget, the one of the highest mean validation accuracy with fewer
   FLOPs. The test split is not part of this phase's data.
2. Report. Each selected pipeline trains on train + validation and is measured on the test
   split, once per report seed REPORT_SEED_BASE + 0 .. report_seeds-1: fresh seeds that took no
   part in the selection. Their mean and sample standard deviation are what is reported.

The paper (Section 4.2) selects on the test set, then trains afresh: "The ML pipeline of the
highest top-1 accuracy on the test set is selected to train the final models. The pipeline is
trained for 5 trials for both MA2ML and MA2ML-Lite. The mean and standard deviation are reported
as the performance." (Table 3: "mean and standard deviation of 5 trials of the best ML
pipeline"). We keep its 5 fresh trials (`retrain.report_seeds`) but select on validation
accuracy: the best of k noisy test estimates is biased upwards, and a test split that chose the
pipeline can no longer measure it. On ImageNet (Section 4.1) the paper retrains "those with FLOPs
fewer than 500M/600M/700M and pick[s] the best as MA2ML-A/B/C": the FLOPs-budget rows
(`--flops_budgets`, `retrain.flops_budgets`, or by default for a search with the MnasNet reward).

Writes `workdir/retrain/results.json` (every run; per top-k pipeline its validation accuracy over
the selection seeds; the selected pipelines with their test accuracy over the report seeds) and
`workdir/retrain/results.md` (the tables, naming the selection and the report seeds). FLOPs and
parameters are the ones the search logged (`cost.py`).

Rerunning resumes: a run (phase x pipeline x seed) already in results.json with the same epochs,
data cap and network is not trained again, so raising --top_k, --seeds or --report_seeds trains
only what is new (and the report runs of a pipeline that the new evidence selects).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ma2ml_jax import cli
from ma2ml_jax import config as config_lib
from ma2ml_jax import data as data_lib
from ma2ml_jax import workdir as workdir_lib
from ma2ml_jax.errors import ConfigError, UserError
from ma2ml_jax.spaces import make_pipeline_space

CONFIG = workdir_lib.CONFIG
TRIALS = workdir_lib.TRIALS
RESULTS_DIR = "retrain"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
# fold_in tag of the retraining keys: apart from the search's per-iteration keys (1, 2, ...).
RETRAIN_STREAM = 0x52455452
# Report seeds are numbered from here, selection seeds below it: the two sets never share a seed
# (nor its key), whatever --seeds and --report_seeds are raised to.
REPORT_SEED_BASE = 1000
# The two phases: the split each is measured on.
SELECT, REPORT = "selection", "report"
MEASURED_ON = {SELECT: "validation", REPORT: "test"}
# The paper's budgets around its 600M constraint (500M / 600M / 700M), as fractions of T.
MNAS_BUDGET_FRACTIONS = (5 / 6, 1.0, 7 / 6)


class Candidate(NamedTuple):
    """One of the top-k pipelines of the search, as its best trial logged it."""

    rank: int  # 1 = the highest search reward
    key: str  # canonical JSON of the tokens: a pipeline's identity
    tokens: dict[str, list[int]]
    reward: float  # search reward (the best one when it was evaluated several times)
    accuracy: float  # search (validation, proxy) accuracy
    flops: float
    params: int
    iteration: int
    index: int


class RetrainResult(NamedTuple):
    records: list[dict[str, Any]]  # one per top-k pipeline, by rank: the selection evidence
    best: dict[str, Any] | None  # the selected pipeline's record with its report (test) runs
    budgets: list[dict[str, Any]]  # one per FLOPs budget: {"flops_budget", "best"}, reported
    trained: int  # runs trained by this call, both phases (the rest came from results.json)
    table: str  # the Markdown tables written to results.md
    path: str  # results.json


# ---------------------------------------------------------------------------------- selection
def pipeline_key(tokens: Mapping[str, Sequence[int]]) -> str:
    """A pipeline's identity: its tokens as canonical JSON."""
    return json.dumps({a: [int(x) for x in v] for a, v in tokens.items()}, sort_keys=True,
                      separators=(",", ":"))


def succeeded(trial: Mapping[str, Any]) -> bool:
    reward = trial.get("reward")
    return (trial.get("failure") is None and reward is not None
            and math.isfinite(float(reward)))


def top_k_pipelines(trials: Sequence[Mapping[str, Any]], k: int) -> list[Candidate]:
    """The k best distinct pipelines by search reward (Algorithm 1, line 14).

    Failed trials are left out; a pipeline evaluated several times (the same tokens) counts once,
    with its best reward; ties go to the earlier trial. Fewer than k when fewer are distinct.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = sorted((t for t in trials if succeeded(t)),
                    key=lambda t: (-float(t["reward"]), t.get("iteration", 0), t.get("index", 0)))
    out: list[Candidate] = []
    seen: set[str] = set()
    for t in ranked:
        key = pipeline_key(t["tokens"])
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(len(out) + 1, key, {a: [int(x) for x in v]
                                                 for a, v in t["tokens"].items()},
                             float(t["reward"]), float(t.get("accuracy", math.nan)),
                             float(t.get("flops", 0.0)), int(t.get("params", 0)),
                             int(t.get("iteration", 0)), int(t.get("index", 0))))
        if len(out) == k:
            break
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def select_best(records: Sequence[Mapping[str, Any]], max_flops: float = math.inf
                ) -> dict[str, Any] | None:
    """The record of the highest mean validation accuracy with fewer FLOPs than `max_flops`.

    Only the selection evidence counts (validation accuracy over the selection seeds), never a
    test accuracy. A pipeline whose every selection seed failed is never picked; ties go to the
    better search rank; None when nothing fits.

    Args:
      records: dicts with "flops", "validation_accuracy_mean", "rank" and optionally
        "selection_failed" (the number of failed seeds) and "selection_seeds" (the seeds).
      max_flops: FLOPs budget; "under" is strictly fewer FLOPs (the paper: "FLOPs fewer than
        500M/600M/700M").
    """
    fits = [r for r in records if float(r["flops"]) < max_flops
            and r.get("selection_failed", 0) < max(1, len(r.get("selection_seeds", [0])))]
    return max(fits, key=lambda r: (r["validation_accuracy_mean"], -r["rank"]), default=None)


def best_under_budgets(records: Sequence[Mapping[str, Any]], budgets: Sequence[float]
                       ) -> list[dict[str, Any]]:
    """`select_best` per FLOPs budget: [{"flops_budget": b, "best": record or None}] in order."""
    return [{"flops_budget": float(b), "best": select_best(records, b)} for b in budgets]


def default_budgets(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """`retrain.flops_budgets`, else for the MnasNet reward T x (5/6, 1, 7/6), else none."""
    budgets = tuple(float(b) for b in config.retrain.get("flops_budgets", ()) or ())
    if budgets:
        return budgets
    if config.reward.kind == "mnas":
        return tuple(config.reward.flops_target * f for f in MNAS_BUDGET_FRACTIONS)
    return ()


# ---------------------------------------------------------------------------------- training
def selection_dataset(dataset: data_lib.Dataset, max_train: int = 0, seed: int = 0
                      ) -> data_lib.Dataset:
    """The selection view of a dataset: the search's train split against its validation split.

    The evaluator measures accuracy on `x_val`: here the validation images the search held out
    of train (`data.val_size`). The test split is left empty, so that nothing the selection
    measures can come from it. Normalization statistics are those of the training split.

    Args:
      dataset: as loaded for the search (without its `max_train` cap).
      max_train: if > 0, keep a seeded subset of this many training images.
      seed: seed of that subset.
    """
    x, y, mean, std = _training_split(dataset.x_train, dataset.y_train, max_train, seed)
    return dataset._replace(x_train=x, y_train=y, x_test=dataset.x_test[:0],
                            y_test=dataset.y_test[:0], mean=mean, std=std)


def retrain_dataset(dataset: data_lib.Dataset, max_train: int = 0, seed: int = 0
                    ) -> data_lib.Dataset:
    """The report view of a dataset: train = train + val, and the test split in "val".

    The evaluator measures accuracy on `x_val`: here that is the test split, touched only by the
    report runs of the pipelines already selected. Normalization statistics are those of the new
    training split.

    Args:
      dataset: as loaded for the search (without its `max_train` cap).
      max_train: if > 0, keep a seeded subset of this many training images.
      seed: seed of that subset.
    """
    x, y, mean, std = _training_split(np.concatenate([dataset.x_train, dataset.x_val]),
                                      np.concatenate([dataset.y_train, dataset.y_val]),
                                      max_train, seed)
    return dataset._replace(x_train=x, y_train=y, x_val=dataset.x_test, y_val=dataset.y_test,
                            mean=mean, std=std)


def _training_split(x: np.ndarray, y: np.ndarray, max_train: int, seed: int):
    """(x, y, mean, std): at most `max_train` images (a seeded subset) and their statistics."""
    if max_train and max_train < len(y):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:max_train])
        x, y = x[keep], y[keep]
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = pixels.mean(0).astype(np.float32)
    std = np.maximum(pixels.std(0), 1e-3).astype(np.float32)
    return x, y, mean, std


def retrain_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
    """The search config with the evaluator set up for retraining: `epochs` epochs, one pipeline
    per call ("loop"), and `retrain.network` ("auto": the exactly-shaped network).
    """
    c = ml_collections.ConfigDict(config.to_dict())
    c.evaluate.epochs = int(epochs)
    c.evaluate.strategy = "loop"  # one pipeline at a time: nothing to stack
    network = config.retrain.get("network", "auto")
    c.evaluate.network = "exact" if network == "auto" else network
    # Layerwise (Iranfar) pipelines: no early termination while retraining; divergence only.
    c.termination.batch_time = 0.0
    c.termination.loss_threshold = math.inf
    c.termination.min_epochs = min(int(c.termination.min_epochs), int(epochs))
    return c


def make_retrainer(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, space,
                   log: Callable[[str], Any] = print
                   ) -> Callable[[Mapping[str, Any], int], dict[str, Any]]:
    """Returns `retrain(pipeline, seed) -> metrics` (accuracy on `dataset.x_val`).

    Args:
      config: `retrain_config(...)` of the search config.
      dataset: `selection_dataset(...)` (accuracy on validation) or `retrain_dataset(...)`
        (accuracy on test).
      space: the search's PipelineSpace.
      log: receives the evaluator's messages.

    Seed s uses the key fold_in(fold_in(key(config.seed), RETRAIN_STREAM), s): its own
    initialization, data order and augmentation draws, the same for every pipeline. Selection
    and report seeds are different numbers (`REPORT_SEED_BASE`), hence different keys.
    """
    import jax

    from ma2ml_jax import evaluate as evaluate_lib
    from ma2ml_jax.spaces.layerwise import is_layerwise

    root = jax.random.fold_in(jax.random.key(config.seed), RETRAIN_STREAM)
    if is_layerwise(space):
        from ma2ml_jax.evaluate_layerwise import make_layerwise_evaluator

        compiled: collections.OrderedDict = collections.OrderedDict()

        def evaluator():  # a fresh epoch budget per run: every run trains `epochs` epochs
            return make_layerwise_evaluator(config, dataset, space, log=lambda _: None,
                                            compiled=compiled)
    else:
        shared = evaluate_lib.make_evaluator(config, dataset, space, log=log)

        def evaluator():
            return shared

    def retrain(pipeline: Mapping[str, Any], seed: int) -> dict[str, Any]:
        return evaluator()([pipeline], jax.random.fold_in(root, seed))[0]

    return retrain


# ---------------------------------------------------------------------------------- driver
def run(workdir: str, *, top_k: int | None = None, seeds: int | None = None,
        report_seeds: int | None = None, epochs: int | None = None,
        flops_budgets: Sequence[float] | None = None, max_train: int | None = None,
        progress: bool = True) -> RetrainResult:
    """Retrains (or resumes retraining) the top-k pipelines of the search in `workdir`.

    Selection runs (seeds 0 .. seeds-1, measured on the validation split) choose the best
    pipeline and the best under each FLOPs budget; report runs of those (seeds REPORT_SEED_BASE
    + 0 .. report_seeds-1, measured on the test split) give the reported test accuracy.

    Args:
      workdir: a search's workdir (config.json and trials.jsonl).
      top_k, seeds, report_seeds, epochs, max_train: None takes `retrain.*` of the search's
        config.
      flops_budgets: budgets of the constrained rows; None: `default_budgets(config)`.
      progress: show a tqdm bar over each phase's runs.

    Raises:
      UserError: a missing workdir, config or trial log, no successful trial, a bad argument.
    """
    config, trials = load_search(workdir)
    own = sorted(a for a, s in config.spaces.items() if s.get("kind") == "choices")
    if own:
        raise UserError(f"{workdir}: spaces {', '.join(own)} are of kind 'choices' (decisions "
                        "of your own, scored by an objective): retrain trains image pipelines' "
                        "networks and cannot train these")
    r = config.retrain
    top_k = r.top_k if top_k is None else top_k
    seeds = r.seeds if seeds is None else seeds
    report_seeds = r.report_seeds if report_seeds is None else report_seeds
    epochs = r.epochs if epochs is None else epochs
    max_train = r.get("max_train", 0) if max_train is None else max_train
    budgets = default_budgets(config) if flops_budgets is None else tuple(flops_budgets)
    for name, value in (("top_k", top_k), ("seeds", seeds), ("report_seeds", report_seeds),
                        ("epochs", epochs)):
        if value < 1:
            raise UserError(f"--{name}={value} must be >= 1")
    if seeds > REPORT_SEED_BASE:
        raise UserError(f"--seeds={seeds} must be <= {REPORT_SEED_BASE}: seeds from "
                        f"{REPORT_SEED_BASE} on are the report's")
    if max_train < 0:
        raise UserError(f"--max_train={max_train} must be >= 0 (0: the whole training split)")
    if any(not b > 0 for b in budgets):
        raise UserError(f"--flops_budgets={','.join(f'{b:g}' for b in budgets)}: every budget "
                        "must be > 0")
    if not any(succeeded(t) for t in trials):
        raise UserError(f"{os.path.join(workdir, TRIALS)}: none of its {len(trials)} trials "
                        "succeeded (all failed): nothing to retrain")
    candidates = top_k_pipelines(trials, top_k)
    if len(candidates) < top_k:
        tqdm.write(f"retrain: only {len(candidates)} distinct successful pipelines in the trial "
                   f"log (--top_k={top_k}); retraining those")


    space = make_pipeline_space(config.spaces)
    pipelines = {c.key: _decode(space, c, workdir) for c in candidates}
    settings = {"epochs": int(epochs), "max_train": int(max_train),
                "network": str(r.get("network", "auto"))}
    selection_seeds = list(range(seeds))
    fresh_seeds = [REPORT_SEED_BASE + i for i in range(report_seeds)]
    out_dir = os.path.join(workdir, RESULTS_DIR)
    path = os.path.join(out_dir, RESULTS_JSON)
    runs = _read_runs(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {out_dir!r}: {e.strerror or e}") from e

    loaded: dict[str, data_lib.Dataset] = {}

    def view(phase: str) -> data_lib.Dataset:
        """The phase's view of the data, loaded only when one of its runs is to train."""
        if "search" not in loaded:
            loaded["search"] = data_lib.load(
                config.data.source, val_size=config.data.val_size, seed=config.seed,
                classes=config.data.classes, num_classes=config.data.num_classes,
                data_dir=config.data.data_dir or None, max_train=0)
        make = selection_dataset if phase == SELECT else retrain_dataset
        return make(loaded["search"], max_train, config.seed)

    def train(phase: str, jobs: list[tuple[Candidate, int]]) -> int:
        """Trains the jobs not yet in `runs`, saving after each; returns how many it trained."""
        done = {(x["key"], x["seed"]) for x in runs
                if x.get("phase") == phase and x.get("settings") == settings}
        pending = [(c, s) for c, s in jobs if (c.key, s) not in done]
        if not pending:
            return 0
        dataset = view(phase)
        n_pipelines = len({c.key for c, _ in jobs})
        tqdm.write(f"retrain ({phase}): {len(pending)} of {len(jobs)} runs to train "
                   f"({n_pipelines} pipelines x {len(jobs) // n_pipelines} seeds, {epochs} "
                   f"epochs); train {len(dataset.y_train)} images "
                   f"({'validation held out' if phase == SELECT else 'train + validation'}), "
                   f"{MEASURED_ON[phase]} {len(dataset.y_val)}")
        retrain = make_retrainer(retrain_config(config, epochs), dataset, space, log=tqdm.write)
        bar = tqdm(pending, total=len(jobs), initial=len(jobs) - len(pending), desc=phase,
                   unit="run", disable=not progress, dynamic_ncols=True)
        for c, seed in bar:
            t0 = time.perf_counter()
            m = retrain(pipelines[c.key], seed)
            runs.append({"phase": phase, "key": c.key, "seed": seed, "settings": settings,
                         "measured_on": MEASURED_ON[phase], "accuracy": float(m["accuracy"]),
                         "failure": m.get("failure"), "loss": _finite_or_none(m.get("loss")),
                         "flops": float(m.get("flops", 0.0)), "params": int(m.get("params", 0)),
                         "wall_time": time.perf_counter() - t0})
            # Written after every run: a killed retraining loses at most the run in progress.
            _write_json(path, {"settings": settings, "runs": runs})
            bar.set_postfix(rank=c.rank, seed=seed, accuracy=f"{m['accuracy']:.4f}")
        bar.close()
        return len(pending)

    trained = train(SELECT, [(c, s) for c in candidates for s in selection_seeds])
    records = _selection_records(candidates, pipelines, runs, settings, selection_seeds)
    best = select_best(records)
    chosen = best_under_budgets(records, budgets) if budgets else []
    selected = {x["key"]: x for x in [best, *(b["best"] for b in chosen)] if x is not None}
    by_key = {c.key: c for c in candidates}
    trained += train(REPORT, [(by_key[k], s) for k in selected for s in fresh_seeds])
    reported = {k: _reported(x, runs, settings, fresh_seeds) for k, x in selected.items()}
    best = reported[best["key"]] if best is not None else None
    chosen = [{"flops_budget": b["flops_budget"],
               "best": reported[b["best"]["key"]] if b["best"] is not None else None}
              for b in chosen]
    table = format_tables(records, best, chosen, space, settings,
                          selection_seeds=selection_seeds, report_seeds=fresh_seeds,
                          val_size=int(config.data.val_size))
    _write_json(path, {"workdir": os.path.abspath(workdir), "settings": settings,
                       "top_k": top_k, "selection_seeds": selection_seeds,
                       "report_seeds": fresh_seeds,
                       "selection": "highest mean validation accuracy over the selection seeds "
                       "(trained on train with data.val_size images held out); ties to the "
                       "better search rank",
                       "report": "test accuracy of the selected pipelines over the report "
                       "seeds (trained on train + validation), which took no part in the "
                       "selection",
                       "std": "sample standard deviation (ddof=1) over seeds",
                       "pipelines": records, "best": best, "budgets": chosen, "runs": runs})
    with open(os.path.join(out_dir, RESULTS_MD), "w") as f:
        f.write(table)
    return RetrainResult(records, best, chosen, trained, table, path)


def load_search(workdir: str) -> tuple[ml_collections.ConfigDict, list[dict[str, Any]]]:
    """(config, trials) of a search workdir; UserError (one line) when something is missing."""
    trials, _ = workdir_lib.require_trials(workdir)
    try:
        saved = workdir_lib.read_config(workdir)
    except UserError as e:
        raise UserError(f"{e}: the search's config is needed to retrain its pipelines") from None
    return _config_from_json(saved), trials


# ---------------------------------------------------------------------------------- tables
def format_tables(records: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None,
                  budgets: Sequence[Mapping[str, Any]], space=None,
                  settings: Mapping[str, Any] | None = None, *,
                  selection_seeds: Sequence[int] = (), report_seeds: Sequence[int] = (),
                  val_size: int | None = None) -> str:
    """The Markdown tables of results.md: the selection evidence of the top-k pipelines, then
    the selected pipelines' report runs, each naming its seeds.
    """
    s = settings or {}
    held_out = f"the {val_size} validation images" if val_size else "the validation split"
    select_text, report_text = _seeds_text(selection_seeds), _seeds_text(report_seeds)
    lines = [f"## Selection: top-{len(records)} pipelines retrained"
             + (f" ({s['epochs']} epochs" + (f", {s['max_train']} training images"
                                             if s.get("max_train") else "") + ")"
                if "epochs" in s else ""),
             "",
             f"Trained on the search's training split with {held_out} held out (data.val_size) "
             f"and measured on them; selection seeds {select_text}. The test split plays no "
             "part in the selection.",
             "",
             "| rank | search reward | validation accuracy (%) | FLOPs | params | pipeline |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in records:
        lines.append(f"| {r['rank']} | {r['reward']:.4f} | {_accuracy(r, SELECT)} | "
                     f"{_si(r['flops'])} | {_si(r['params'])} | "
                     f"{compact(r['pipeline'], space)} |")
    lines += ["", "## Report: the selected pipelines retrained on fresh seeds", "",
              f"Selected by mean validation accuracy over selection seeds {select_text}; then "
              f"retrained on train + validation with report seeds {report_text}, which took no "
              "part in the selection, and measured on the test split: the reported accuracy.",
              "",
              "| selected as | rank | validation accuracy (%) | test accuracy (%) | FLOPs | "
              "params | pipeline |",
              "|---|---:|---:|---:|---:|---:|---|"]
    rows = [("best", best)] + [(f"FLOPs < {_si(b['flops_budget'])}", b["best"]) for b in budgets]
    for role, r in rows:
        if r is None:
            why = "every selection run failed" if role == "best" else "none under the budget"
            lines.append(f"| {role} | - | {why} | - | - | - | - |")
        else:
            lines.append(f"| {role} | {r['rank']} | {_accuracy(r, SELECT)} | "
                         f"{_accuracy(r, REPORT)} | {_si(r['flops'])} | {_si(r['params'])} | "
                         f"{compact(r['pipeline'], space)} |")
    return "\n".join(lines) + "\n"


_SHORT = {"learning_rate": "lr", "weight_decay": "wd", "label_smoothing": "ls",
          "warmup_epochs": "warmup", "stochastic_depth": "sd", "resolution": "res",
          "kernel": "k", "expansion": "e", "width": "w", "depth": "d", "stride": "s",
          "learning_rate_schedule": "lr", "weight_decay_schedule": "wd", "optimizer": "opt"}


def compact(pipeline: Mapping[str, Any], space=None, width: int = 160) -> str:
    """A decoded pipeline on one line for a table cell: `agent: values; ...`, each agent cut to
    `width` characters (results.json holds the whole pipeline).
    """
    parts = []
    for agent, value in pipeline.items():
        text = _compact_value(value)
        if len(text) > width:
            text = text[:width - 1] + "…"
        parts.append(f"{agent}: {text}")
    return "; ".join(parts).replace("|", "/")


def _compact_value(v: Any) -> str:
    if isinstance(v, Mapping):
        if {"op", "prob", "magnitude"} <= set(v):  # an augmentation op
            return f"{v['op']}({_num(v['prob'])},{_num(v['magnitude'])})"
        items = [(k, x) for k, x in v.items()]
        if len(items) == 1 and isinstance(items[0][1], list):  # {"subpolicies": [...]}
            return _compact_value(items[0][1])
        return " ".join(f"{_SHORT.get(k, k)}={_compact_value(x)}" for k, x in items)
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, Mapping) and {"op", "prob", "magnitude"} <= set(x) for x in v):
            return "+".join(_compact_value(x) for x in v)  # a sub-policy
        inner = [_compact_value(x) for x in v]
        return "[" + (", ".join(inner) if all(not isinstance(x, (Mapping, list, tuple))
                                              for x in v) else " / ".join(inner)) + "]"
    return _num(v)


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:g}"


def _accuracy(r: Mapping[str, Any], phase: str) -> str:
    """`mean ± std (n seeds)` in %, of the selection (validation) or the report (test) runs."""
    measured = MEASURED_ON[phase]
    n = len(r[f"{phase}_seeds"])
    text = (f"{100 * r[f'{measured}_accuracy_mean']:.2f} ± "
            f"{100 * r[f'{measured}_accuracy_std']:.2f} ({n} seed{'s' if n != 1 else ''})")
    return text + (f", {r[f'{phase}_failed']} failed" if r.get(f"{phase}_failed") else "")


def _seeds_text(seeds: Sequence[int]) -> str:
    """`0, 1` or, for three or more consecutive seeds, `1000–1004`."""
    seeds = [int(s) for s in seeds]
    if len(seeds) >= 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "none"


def _si(x: float) -> str:
    x = float(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


# ---------------------------------------------------------------------------------- helpers
def _phase_runs(runs, settings, phase: str, key: str, seeds: Sequence[int]
                ) -> dict[str, Any]:
    """Accuracy over `seeds` of one pipeline's runs in one phase: the record fields
    `{measured}_accuracy[_mean|_std]`, `{phase}_seeds`, `{phase}_failed`, `{phase}_failures`.
    """
    by_seed = {x["seed"]: x for x in runs
               if x.get("phase") == phase and x["key"] == key and x.get("settings") == settings}
    mine = [by_seed[s] for s in seeds]
    acc = [x["accuracy"] for x in mine]
    mean, std = mean_std(acc)
    measured = MEASURED_ON[phase]
    return {f"{phase}_seeds": list(seeds), f"{measured}_accuracy": acc,
            f"{measured}_accuracy_mean": mean, f"{measured}_accuracy_std": std,
            f"{phase}_failed": sum(1 for x in mine if x.get("failure")),
            f"{phase}_failures": [x.get("failure") for x in mine]}


def _selection_records(candidates, pipelines, runs, settings, seeds) -> list[dict[str, Any]]:
    """One record per top-k pipeline: its search log entry and its selection (validation) runs."""
    return [{"rank": c.rank, "key": c.key, "reward": c.reward, "search_accuracy": c.accuracy,
             "flops": c.flops, "params": c.params, "iteration": c.iteration, "index": c.index,
             **_phase_runs(runs, settings, SELECT, c.key, seeds),
             "tokens": c.tokens, "pipeline": pipelines[c.key]} for c in candidates]


def _reported(record, runs, settings, seeds) -> dict[str, Any]:
    """A selected pipeline's record with its report (test) runs added."""
    return {**record, **_phase_runs(runs, settings, REPORT, record["key"], seeds)}


def _decode(space, c: Candidate, workdir: str) -> dict[str, Any]:
    try:
        if set(c.tokens) != set(space.agents):
            raise ValueError(f"agents {sorted(c.tokens)} != {sorted(space.agents)}")
        return space.decode({a: np.asarray(c.tokens[a]) for a in space.agents})
    except Exception as e:  # noqa: BLE001 - a log written by another version of the spaces
        raise UserError(f"{workdir}: the logged tokens of iteration {c.iteration} pipeline "
                        f"{c.index} do not fit the config's spaces ({e}); was the code "
                        "changed since the search?") from e


def _read_runs(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            runs = json.load(f).get("runs", [])
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"cannot read {path} ({e}); move it away to retrain from scratch") from e
    return [x for x in runs
            if isinstance(x, dict) and {"phase", "key", "seed", "accuracy"} <= set(x)]


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # never a half-written results.json


def _finite_or_none(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """The search's config from config.json: JSON lists back to tuples, and any `retrain` key a
    config of an older version lacks filled in from `config.base_config()`.
    """

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x

    saved = tuples(saved)
    saved["retrain"] = {**config_lib.base_config().retrain.to_dict(), **saved.get("retrain", {})}
    try:
        return ml_collections.ConfigDict(saved)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot rebuild the search's config from {CONFIG}: {e}") from e


# ---------------------------------------------------------------------------------- command line
def _budgets(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers "
                                         "(e.g. 500e6,600e6,700e6)") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m ma2ml_jax.retrain", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the search's workdir")
    p.add_argument("--top_k", type=int, default=None,
                   help="pipelines to retrain (default: retrain.top_k of the search's config)")
    p.add_argument("--seeds", type=int, default=None,
                   help="selection runs per top-k pipeline, measured on the validation split "
                        f"(seeds 0..N-1, N <= {REPORT_SEED_BASE}; default: retrain.seeds)")
    p.add_argument("--report_seeds", type=int, default=None,
                   help="fresh runs per selected pipeline, measured on the test split: the "
                        f"reported mean and std (seeds {REPORT_SEED_BASE}.."
                        f"{REPORT_SEED_BASE}+N-1; default: retrain.report_seeds)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of each run (default: retrain.epochs)")
    p.add_argument("--flops_budgets", type=_budgets, default=None,
                   help="comma-separated FLOPs budgets, e.g. 500e6,600e6,700e6: the "
                        "pipeline selected under each (default: retrain.flops_budgets; with "
                        "the mnas reward, flops_target x 5/6, 1, 7/6)")
    p.add_argument("--max_train", type=int, default=None,
                   help="cap on the training images (default: retrain.max_train; 0: all)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    p.add_argument("--noprogress", dest="progress", action="store_false",
                   help=argparse.SUPPRESS)  # absl's spelling, as train.py takes it
    p.add_argument("--traceback", action="store_true",
                   help="show the full traceback for bad input instead of one line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config_lib.setup_jax_for_cli()
    with cli.user_errors(args.traceback):
        result = run(args.workdir, top_k=args.top_k, seeds=args.seeds,
                     report_seeds=args.report_seeds, epochs=args.epochs,
                     flops_budgets=args.flops_budgets, max_train=args.max_train,
                     progress=args.progress)
    print(result.table, end="")
    print(f"Results: {result.path} ({result.trained} runs trained now)")


if __name__ == "__main__":
    main()
