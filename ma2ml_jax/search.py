"""The search driver: ask -> evaluate -> tell, with a trial log, progress and resume.

    result = search.run(config, workdir)                  # trains proxy networks for rewards
    result = search.run(config, workdir, objective=fn)    # your own function of decoded pipelines
    result = search.run(config, workdir, objective=fn, space={"model": {"depth": [2, 4]}})

Every evaluated pipeline is appended to `workdir/trials.jsonl` (one JSON object a line: iteration,
index, decoded pipeline, tokens, reward, accuracy, FLOPs, params, wall time, failure reason).
Rerunning with the same workdir resumes. After every iteration the searcher state is saved with
orbax (`checkpoint.py`, `workdir/checkpoints/`) in step with the log, with the evaluator's state
(`evaluator.Evaluator`: the epochs per episode of Iranfar et al.'s search); a resume restores the
newest checkpoint and replays any logged iteration after it through the searcher's ask/tell and
the evaluator's `replay` (per-iteration keys are `fold_in(seed, iteration)`, so the replay
rebuilds both states exactly, without evaluating anything again). A searcher whose state is not
arrays (TPE), or a run with `search.checkpoint=False`, replays the whole log. A partial
iteration of a killed run is dropped from the log and evaluated again.

In a multi-process run (a TPU pod slice, `distributed.py`) process 0 runs the searcher and writes
the workdir; every other process trains its share of the pipelines process 0 sends, and all
return the same result.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ma2ml_jax import agents, data, distributed, rewards, spaces, stream, tensorboard
from ma2ml_jax import checkpoint as checkpoint_lib
from ma2ml_jax import config as config_lib
from ma2ml_jax import evaluate as evaluate_lib
from ma2ml_jax import workdir as workdir_lib
from ma2ml_jax.errors import ConfigError, UserError

TRIALS = workdir_lib.TRIALS  # the trial log and the saved config in a workdir
CONFIG = workdir_lib.CONFIG
# fold_in data of the evaluator's init key: a stream apart from the searcher's (0) and the
# iterations' (1, 2, ...).
EVALUATOR_STREAM = 0x4556414C
# An objective maps decoded pipelines to rewards (floats) or to metrics dicts with a "reward" key.
Objective = Callable[[list[dict[str, Any]]], Sequence[float] | Sequence[Mapping[str, Any]]]


class SearchResult(NamedTuple):
    best_pipeline: dict[str, Any]
    best_reward: float
    trials: list[dict[str, Any]]
    workdir: str
    space: spaces.PipelineSpace
    # Fraction of asked pipelines that were repeats (replaced when search.avoid_repeats is on).
    repeat_fraction: float = 0.0
    # Fraction of evaluated pipelines that had been evaluated before (no replacement found).
    evaluated_repeat_fraction: float = 0.0


def run(config: ml_collections.ConfigDict, workdir: str, *, objective: Objective | None = None,
        space: spaces.PipelineSpace | Mapping[str, Mapping[str, Any]] | None = None,
        progress: bool = True) -> SearchResult:
    """Runs (or resumes) a search and returns the best pipeline found.

    Args:
      config: an experiment config (`configs/*.py`).
      workdir: directory for the trial log and the saved config; created if needed.
      objective: optional function from a list of decoded pipelines to rewards, used instead of
        training proxy networks (no data is loaded then).
      space: optional space searched instead of `config.spaces` (needs `objective`): a
        PipelineSpace, or {agent: {decision: [values]}} for `choices` spaces. The saved
        config.json records it in its `spaces` section as `choices` kinds, so a resume with
        another space is refused.
      progress: show a tqdm progress bar.
    """
    if space is not None:
        config = _with_space(config, space)
    config_lib.validate(config)
    own = sorted(a for a, s in config.spaces.items() if s.kind == "choices")
    if objective is None and own:
        raise ConfigError(f"spaces of kind 'choices' ({', '.join(own)}) are scored by an "
                          "objective: pass objective= to search.run")
    recorded = spaces.make_pipeline_space(config.spaces)
    space = space if isinstance(space, spaces.PipelineSpace) else recorded
    channel = distributed.Channel()
    if not distributed.is_primary():
        return _follow(config, workdir, space, objective, channel)
    try:
        return _lead(config, workdir, space, objective, progress, channel)
    except BaseException:
        channel.abort()  # the other processes wait for the next message: tell them to stop
        raise


def _with_space(config: ml_collections.ConfigDict, space) -> ml_collections.ConfigDict:
    """A copy of `config` whose `spaces` section describes `space` as `choices` kinds."""
    try:
        described = spaces.choices_spaces_config(space)
        if not described:
            raise ValueError("space is empty: at least one agent is needed")
        config = copy.deepcopy(config)
        with config.unlocked():
            config.spaces = ml_collections.ConfigDict(described)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"space=: {e}") from e
    return config


def _lead(config, workdir, space, objective, progress, channel) -> SearchResult:
    """The search on process 0 (the only process of a single-process run)."""
    _prepare_workdir(workdir, config)
    searcher = agents.make_searcher(config, space)
    reward_fn = rewards.make_reward_fn(config.reward)
    if objective is None:
        dataset = _load_data(config)
        tqdm.write(f"data: {dataset.summary()}")
        evaluator = evaluate_lib.make_evaluator_with_state(config, dataset, space,
                                                           log=tqdm.write)
        if distributed.multiprocess():
            tqdm.write(f"{jax.process_count()} processes train each iteration's pipelines over "
                       f"{jax.device_count()} devices; this one (process 0) writes {workdir}")
    else:
        evaluator = evaluate_lib.stateless(_objective_evaluator(objective))

    root = jax.random.key(config.seed)
    state = searcher.init(jax.random.fold_in(root, 0))
    evaluator_state = evaluator.init(jax.random.fold_in(root, EVALUATOR_STREAM))
    trials, _ = workdir_lib.read_trials(workdir_lib.trials_path(workdir))
    done = _complete_iterations(trials, config.search.pipelines)
    avoid = (config.search.avoid_repeats
             and config.search.algorithm in config_lib.REPEAT_AWARE)
    guard = agents.RepeatGuard(searcher, avoid, config.search.repeat_rounds)

    checkpoints = None
    if (config.search.checkpoint and checkpoint_lib.checkpointable(state)
            and checkpoint_lib.checkpointable(evaluator_state)):
        try:
            checkpoints = checkpoint_lib.SearchCheckpoints(workdir)
        except OSError as e:
            raise UserError(f"cannot write checkpoints under {workdir!r}: {e}") from e
    first = evaluator_first = 0
    if checkpoints is not None and done:
        step = checkpoints.latest_step(at_most=done)
        if step:
            state, counters, restored = checkpoints.restore(step, state, guard.counters,
                                                            evaluator_state)
            before = sorted((t for t in trials if t["iteration"] < step),
                            key=lambda t: (t["iteration"], t["index"]))
            guard.restore(counters, {a: np.asarray([t["tokens"][a] for t in before], np.int32)
                                     for a in space.agents}, [t["reward"] for t in before])
            first = step
            if restored is not None:  # None: a checkpoint without it, rebuilt from the log
                evaluator_state, evaluator_first = restored, step
            tqdm.write(f"resuming {workdir}: searcher state restored from the checkpoint of "
                       f"iteration {step}")

    def logged_rewards(it):
        """Iteration `it`'s logged rewards for `RepeatGuard.step` (the asks must match the log)."""
        def evaluate(actions, key):
            del key
            logged = _logged(trials, it)
            _check_replay(actions, logged, it)
            return [t["reward"] for t in logged], None

        return evaluate

    for it in range(first, done):  # resume: replay the logged iterations through ask/tell
        state, _, _ = guard.step(state, root, it, logged_rewards(it))
    for it in range(evaluator_first, done):
        evaluator_state = evaluator.replay(evaluator_state,
                                           [_logged_metrics(t) for t in _logged(trials, it)])
    trials = [t for t in trials if t["iteration"] < done]
    if done > first:
        tqdm.write(f"resuming {workdir}: {done - first} logged iterations replayed through the "
                   f"searcher ({len(trials)} pipelines in the log)")

    log_path = workdir_lib.trials_path(workdir)
    workdir_lib.write_trials(log_path, trials)  # without a killed run's partial iteration
    bar = tqdm(range(done, config.search.iterations), total=config.search.iterations,
               initial=done, desc="search", unit="iter", disable=not progress, dynamic_ncols=True)
    start, evaluated = time.perf_counter(), 0
    scalars = tensorboard.ScalarWriter(os.path.join(workdir, "tensorboard"))

    def evaluation(it, evaluator_state):
        """Iteration `it`'s evaluation for `RepeatGuard.step`: rewards, and what the log needs."""
        def run(tokens, key):
            pipelines = [space.decode(tokens, p) for p in range(config.search.pipelines)]
            channel.send(it, tokens)
            channel.evaluating = True  # the other processes are in the same (collective) training
            evaluator_state_, metrics = evaluator.evaluate(evaluator_state, pipelines, key)
            channel.evaluating = False
            reward = [float(m["reward"]) if "reward" in m else reward_fn(m) for m in metrics]
            return reward, (pipelines, metrics, reward, evaluator_state_)

        return run

    for it in bar:
        state, tokens, (pipelines, metrics, reward, evaluator_state) = guard.step(
            state, root, it, evaluation(it, evaluator_state))
        new = [_trial(it, p, pipelines[p], {a: v[p] for a, v in tokens.items()}, reward[p],
                      metrics[p]) for p in range(len(pipelines))]
        workdir_lib.append_trials(log_path, new)
        trials.extend(new)
        try:
            scalars.scalars(workdir_lib.iteration_scalars(new, trials), step=it)
            if checkpoints is not None:
                checkpoints.save(it + 1, state, guard.counters, evaluator_state)
        except Exception as e:  # noqa: BLE001 - the trial log is the record; these are extras
            tqdm.write(f"warning: could not write a checkpoint or TensorBoard scalars ({e}); "
                       "the search goes on (a resume replays the trial log instead)")
            checkpoints = None
        evaluated += len(new)
        hours = (time.perf_counter() - start) / 3600
        bar.set_postfix(best=f"{max(t['reward'] for t in trials):.4f}",
                        pipelines_per_hour=f"{evaluated / max(hours, 1e-9):.0f}",
                        repeats=f"{guard.repeat_fraction:.0%}")
    bar.close()
    scalars.close()
    if checkpoints is not None:
        checkpoints.close()
    if not trials:
        raise ConfigError("search.iterations is 0: nothing was evaluated")
    channel.finish({"trials": trials, "repeat_fraction": guard.repeat_fraction,
                    "evaluated_repeat_fraction": guard.evaluated_repeat_fraction})
    return _result(trials, workdir, space, guard.repeat_fraction,
                   guard.evaluated_repeat_fraction)


def _follow(config, workdir, space, objective, channel) -> SearchResult:
    """The search on every process but 0 of a multi-process run: loads the same data, trains the
    pipelines process 0 sends (its share of the sharded programs) and writes nothing.
    """
    evaluator = None
    root = jax.random.key(config.seed)
    if objective is None:  # an objective is evaluated by process 0 alone
        dataset = _load_data(config)
        evaluator = evaluate_lib.make_evaluator_with_state(config, dataset, space,
                                                           log=lambda _: None)
        # This process's own evaluator state, which after a resume is not process 0's (restored
        # from a workdir this process may not see). Harmless while only the layerwise evaluator
        # keeps state: it trains on every process alone (no collective to fall out of step
        # with), and only process 0's metrics count.
        evaluator_state = evaluator.init(jax.random.fold_in(root, EVALUATOR_STREAM))
    while (message := channel.receive()) is not None:
        it, tokens = message
        if evaluator is not None:
            evaluator_state, _ = evaluator.evaluate(
                evaluator_state, [space.decode(tokens, p) for p in range(config.search.pipelines)],
                agents.iteration_keys(root, it)[1])
    got = channel.result()
    return _result(got["trials"], workdir, space, got["repeat_fraction"],
                   got["evaluated_repeat_fraction"])


def _load_data(config: ml_collections.ConfigDict) -> data.Dataset | stream.StreamingDataset:
    d = config.data
    if stream.wanted(d.source, d.stream, d.data_dir or None):
        return stream.load(d.source, val_size=d.val_size, seed=config.seed, classes=d.classes,
                           num_classes=d.num_classes, data_dir=d.data_dir or None,
                           max_train=d.max_train, image_size=d.image_size, workers=d.workers,
                           prefetch=d.prefetch)
    return data.load(config.data.source, val_size=config.data.val_size, seed=config.seed,
                     classes=config.data.classes, num_classes=config.data.num_classes,
                     data_dir=config.data.data_dir or None, max_train=config.data.max_train)


def _result(trials, workdir, space, repeat_fraction, evaluated_repeat_fraction) -> SearchResult:
    best = max(trials, key=lambda t: t["reward"])
    return SearchResult(best["pipeline"], best["reward"], trials, workdir, space,
                        repeat_fraction, evaluated_repeat_fraction)


def summary(result: SearchResult) -> str:
    """The best pipeline, decoded and readable, with its reward and metrics."""
    t = max(result.trials, key=lambda t: t["reward"])
    failed = sum(1 for x in result.trials if x["failure"])
    # An objective that returns only rewards reports no accuracy, FLOPs or parameters.
    metrics = (f" (val accuracy {t['accuracy']:.4f}, {t['flops'] / 1e6:.2f}M FLOPs, "
               f"{t['params'] / 1e3:.1f}K params)"
               if t["accuracy"] or t["flops"] or t["params"] else "")
    lines = [f"Best pipeline of {len(result.trials)} evaluated ({failed} failed), iteration "
             f"{t['iteration']}: reward {t['reward']:.4f}{metrics}; "
             f"{result.repeat_fraction:.0%} of the asked pipelines were repeats, "
             f"{result.evaluated_repeat_fraction:.0%} of the evaluated ones",
             result.space.format(t["pipeline"]),
             f"Trial log: {os.path.join(result.workdir, TRIALS)}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ helpers
_METRICS = ("reward", "accuracy", "loss", "flops", "params", "wall_time", "failure")


def _trial(it, index, pipeline, tokens, reward, m) -> dict[str, Any]:
    trial = {"iteration": it, "index": index, "pipeline": pipeline,
             "tokens": {a: [int(x) for x in v] for a, v in tokens.items()},
             "reward": reward, "accuracy": float(m.get("accuracy", 0.0)),
             "loss": _finite_or_none(m.get("loss")), "flops": float(m.get("flops", 0.0)),
             "params": int(m.get("params", 0)), "wall_time": float(m.get("wall_time", 0.0)),
             "failure": m.get("failure")}
    # An evaluator's own numbers (Iranfar et al.'s N_epoch, epochs trained, attempts, clamped
    # layers; an objective's extra keys) are kept under "extra": scalars and lists of scalars.
    extra = {k: p for k, v in m.items() if k not in _METRICS and (p := _plain(v)) is not None}
    if extra:
        trial["extra"] = extra
    return trial


def _logged_metrics(trial: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluator's metrics as `_trial` logged them (its own numbers back from "extra")."""
    return {**{k: trial[k] for k in _METRICS if k in trial}, **trial.get("extra", {})}


def _plain(v):
    """A JSON scalar or list of scalars for `v`, or None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain(x) for x in v]
        if all(isinstance(x, (bool, int, float, str)) for x in items):
            return items
    return None


def _finite_or_none(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _objective_evaluator(objective: Objective):
    def evaluate(pipelines, key):
        del key
        start = time.perf_counter()
        values = list(objective(pipelines))
        if len(values) != len(pipelines):
            raise UserError(f"the objective returned {len(values)} values for {len(pipelines)} "
                            "pipelines")
        wall = (time.perf_counter() - start) / max(1, len(pipelines))
        out = []
        for v in values:
            m = dict(v) if isinstance(v, Mapping) else {"reward": float(v)}
            if "reward" not in m and "accuracy" not in m:
                raise UserError("an objective's metrics dict needs a 'reward' or 'accuracy' key")
            out.append({"wall_time": wall, **m})
        return out

    return evaluate


def _prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e
    path = workdir_lib.config_path(workdir)
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        saved = workdir_lib.read_config(workdir)
        ignore = {("search", "iterations"), ("search", "checkpoint")}
        diff = sorted(_diff(saved, current, ignore))
        if diff:
            raise ConfigError(f"workdir {workdir!r} holds a search with another config (differs "
                              f"at {', '.join(diff[:5])}); use a new --workdir")
    workdir_lib.write_config(workdir, current)


def _diff(a, b, ignore, prefix=()):
    if isinstance(a, dict) and isinstance(b, dict):
        if prefix[-1:] == ("decisions",) and set(a) == set(b) and list(a) != list(b):
            yield ".".join(prefix) + " (order)"  # a choices space's decisions are its token order
        for k in set(a) | set(b):
            if prefix + (k,) in ignore:
                continue
            if k not in a or k not in b:
                yield ".".join(prefix + (k,))
            else:
                yield from _diff(a[k], b[k], ignore, prefix + (k,))
    elif a != b:
        yield ".".join(prefix)


def _complete_iterations(trials: list[dict[str, Any]], per_iteration: int) -> int:
    it = 0
    while sum(1 for t in trials if t["iteration"] == it) == per_iteration:
        it += 1
    return it


def _logged(trials: list[dict[str, Any]], it: int) -> list[dict[str, Any]]:
    """The logged trials of iteration `it` in pipeline order."""
    return sorted((t for t in trials if t["iteration"] == it), key=lambda t: t["index"])


def _check_replay(actions, logged, it) -> None:
    for t in logged:
        for a, v in actions.items():
            if [int(x) for x in np.asarray(v)[t["index"]]] != t["tokens"][a]:
                raise UserError(f"cannot resume: iteration {it} of the trial log does not match "
                                "the searcher's replay (was the code or seed changed?)")
