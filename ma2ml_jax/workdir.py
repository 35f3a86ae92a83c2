"""A search's working directory: the trial log and the saved config, read and written here only.

    workdir/trials.jsonl   one JSON object a line per evaluated pipeline (iteration, index,
                           pipeline, tokens, reward, metrics, failure), appended an iteration at
                           a time
    workdir/config.json    the search's config, written when the search starts
    workdir/tensorboard/   per-iteration scalars of the log (`iteration_scalars`)

One rule for a torn log: a search killed while appending leaves at most its last line cut, so a
last line that is not JSON is left out (and reported as `torn`); a bad line anywhere else is not a
kill's doing and stops the reader with a one-line error, so nothing after it is silently dropped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ma2ml_jax.errors import UserError

TRIALS = "trials.jsonl"
CONFIG = "config.json"


def trials_path(workdir: str) -> str:
    return os.path.join(workdir, TRIALS)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG)


def read_trials(path: str) -> tuple[list[dict[str, Any]], bool]:
    """(trial records, whether a cut last line was left out) of a trial log.

    A missing file is an empty log. Raises UserError for an unreadable file, a bad line before
    the last, or a line that is not a trial record.
    """
    if not os.path.exists(path):
        return [], False
    try:
        with open(path) as f:
            lines = [(n, s) for n, s in enumerate(f.read().split("\n"), 1) if s.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    trials, torn = [], False
    for i, (n, line) in enumerate(lines):
        try:
            t = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
                break
            raise UserError(f"{path} line {n} is not valid JSON (only the last line of a killed "
                            "run may be cut)") from None
        if not isinstance(t, dict) or not {"iteration", "reward"} <= set(t):
            raise UserError(f"{path} line {n} is not a trial record (needs 'iteration' and "
                            "'reward')")
        trials.append(t)
    return trials, torn


def require_trials(workdir: str) -> tuple[list[dict[str, Any]], bool]:
    """`read_trials` of a workdir that must hold a log: one-line UserError for a missing workdir
    or log, or a log without a complete trial.
    """
    if not os.path.isdir(workdir):
        raise UserError(f"no such workdir: {workdir}")
    path = trials_path(workdir)
    if not os.path.isfile(path):
        raise UserError(f"{workdir} has no {TRIALS}: not a search workdir, or nothing evaluated")
    trials, torn = read_trials(path)
    if not trials:
        raise UserError(f"{path} holds no complete trial: nothing evaluated yet")
    return trials, torn


def write_trials(path: str, trials: Sequence[dict[str, Any]]) -> None:
    """Rewrites the log with `trials` (a resume drops a killed run's partial iteration)."""
    with open(path, "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in trials)


def append_trials(path: str, new: Sequence[dict[str, Any]]) -> None:
    """Appends an iteration to the trial log; if that fails (a full disk), the iteration's
    results go to stderr as the log's JSON lines, so nothing evaluated is lost.
    """
    lines = "".join(json.dumps(t) + "\n" for t in new)
    try:
        with open(path, "a") as f:
            f.write(lines)
            f.flush()
    except OSError as e:
        sys.stderr.write(lines)
        raise UserError(f"cannot append to the trial log {path} ({e.strerror or e}): this "
                        f"iteration's {len(new)} results are the JSON lines printed above (append "
                        "them to the log once it is writable); the iterations before it are "
                        "saved, and rerunning with the same --workdir resumes") from e


def read_config(workdir: str) -> dict[str, Any]:
    """The saved config of a workdir as a dict; one-line UserError when missing or unreadable."""
    path = config_path(workdir)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{workdir} has no {CONFIG}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a config (a JSON object)")
    return config


def write_config(workdir: str, config: dict[str, Any]) -> None:
    with open(config_path(workdir), "w") as f:
        json.dump(config, f, indent=2)


def iteration_scalars(new: Sequence[Mapping[str, Any]], trials: Sequence[Mapping[str, Any]],
                      top_k: int = 10) -> dict[str, float]:
    """TensorBoard scalars of one search iteration.

    Args:
      new: the trial records of this iteration.
      trials: every trial record so far, this iteration's included.
      top_k: k of the `reward/top{k}_so_far` curve (Figure 4).
    """
    reward = np.array([t["reward"] for t in new], float)
    every = np.array([t["reward"] for t in trials], float)
    every = np.sort(every[np.isfinite(every)])[::-1]
    return {"reward/mean": float(np.nanmean(reward)) if np.isfinite(reward).any() else math.nan,
            "reward/max": float(np.nanmax(reward)) if np.isfinite(reward).any() else math.nan,
            "reward/best_so_far": float(every[0]) if every.size else math.nan,
            f"reward/top{top_k}_so_far": float(every[:top_k].mean()) if every.size else math.nan,
            "accuracy/max": float(max((t.get("accuracy") or 0.0) for t in new)),
            "failures/fraction": float(np.mean([t.get("failure") is not None for t in new]))}
