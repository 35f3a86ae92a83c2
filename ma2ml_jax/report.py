r"""Reports of searches: plots and a markdown summary from workdirs, TensorBoard scalars live.

    python -m ma2ml_jax.report runs/ma2ml runs/lite --out runs/compare --top_k 20

reads each workdir's `trials.jsonl` (and `config.json` for its label) and writes into --out
(default: the first DIR/report):

    topk.png        mean reward of the top-k pipelines found so far, and the best (top-1), against
                    iteration; one line per workdir (the paper's Figures 4 and 5, left)
    rewards.png     every pipeline's reward at its iteration, one panel per workdir (Figures 4-5,
                    right); failed pipelines are grey crosses
    pareto.png      accuracy against FLOPs, every workdir, each with its Pareto front (the best
                    accuracy at most that many FLOPs; failed pipelines are left out of it)
    actions_*.png   one per workdir: how settled each agent's choices are, the normalized entropy
                    of every decision over iterations (1: as spread as the sample allows, 0: one
                    choice)
    summary.md      per workdir: algorithm, pipelines, failures, best reward, the top-5 pipelines
                    decoded, the most settled decisions; links to the plots

During a search, `search.run` writes per-iteration scalars (`workdir.iteration_scalars`) as
TensorBoard event files with `ma2ml_jax.tensorboard.ScalarWriter` (no TensorFlow needed).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ma2ml_jax import cli
from ma2ml_jax import workdir as workdir_lib
from ma2ml_jax.errors import EXIT_USER_ERROR, UserError

SUMMARY = "summary.md"
TOP_SHOWN = 5  # pipelines decoded per workdir in summary.md
MIN_ENTROPY_SAMPLES = 8  # pipelines per column of the action heatmap at least
MAX_ENTROPY_COLUMNS = 60


class Run(NamedTuple):
    """One search workdir, read.

    Attributes:
      workdir: the directory.
      label: a name for legends, unique among the runs of a report.
      algorithm: `search.algorithm` from config.json, or None without one.
      seed: `seed` from config.json, or None.
      trials: the trial log's records, in order.
      space: the PipelineSpace rebuilt from config.json (decision names and sizes), or None.
      torn: whether a torn last line (a killed run) was left out.
    """

    workdir: str
    label: str
    algorithm: str | None
    seed: int | None
    trials: list[dict[str, Any]]
    space: Any
    torn: bool


class Columns(NamedTuple):
    """A run's trials as arrays, each [N] in log order."""

    iteration: np.ndarray
    reward: np.ndarray
    accuracy: np.ndarray
    flops: np.ndarray
    params: np.ndarray
    failed: np.ndarray  # bool: the failure field is set, or the reward is not finite


# ---------------------------------------------------------------------------------- reading
def load_run(workdir: str) -> Run:
    """Reads a workdir; raises UserError (one line) for a missing dir or a missing/bad log."""
    trials, torn = workdir_lib.require_trials(workdir)
    config = _read_config(workdir)
    algorithm = config.get("search", {}).get("algorithm") if config else None
    seed = config.get("seed") if config else None
    space = _space_from_config(config, trials)
    label = f"{algorithm} (seed {seed})" if algorithm else _dir_name(workdir)
    return Run(workdir, label, algorithm, seed, trials, space, torn)


def load_runs(workdirs: Sequence[str]) -> list[Run]:
    """Reads the workdirs; labels that would repeat get the directory name appended."""
    runs = [load_run(w) for w in workdirs]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    return [r._replace(label=f"{r.label} [{_dir_name(r.workdir)}]") if counts[r.label] > 1
            and r.label != _dir_name(r.workdir) else r for r in runs]


def _read_config(workdir: str) -> dict[str, Any] | None:
    try:
        return workdir_lib.read_config(workdir)
    except UserError:
        return None  # labels fall back to the directory name


def _space_from_config(config, trials):
    """The PipelineSpace of the search, if config.json rebuilds one that fits the tokens."""
    if not config or "spaces" not in config:
        return None
    try:
        from ma2ml_jax import spaces  # lazily: a report without a space needs no JAX

        space = spaces.make_pipeline_space(config["spaces"])
    except Exception:  # a config from another version: the report goes on with token numbers
        return None
    tokens = trials[0].get("tokens") or {}
    if set(tokens) != set(space.agents) or any(
            len(tokens[a]) != space[a].n_decisions for a in space.agents):
        return None
    return space


def _dir_name(workdir: str) -> str:
    return os.path.basename(os.path.normpath(workdir)) or workdir


def columns(run: Run) -> Columns:
    t = run.trials

    def col(key, default=0.0):
        return np.array([float(x[key]) if x.get(key) is not None else default for x in t])

    reward = col("reward", math.nan)
    failed = np.array([x.get("failure") is not None for x in t]) | ~np.isfinite(reward)
    return Columns(col("iteration").astype(int), reward, col("accuracy", math.nan), col("flops"),
                   col("params"), failed)


# ---------------------------------------------------------------------------------- statistics
def top_k_so_far(iteration: np.ndarray, reward: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean reward of the k best pipelines evaluated up to each iteration (Figures 4-5, left).

    Args:
      iteration: int[N], the iteration of each pipeline.
      reward: float[N]; non-finite rewards are left out.
      k: how many of the best; with fewer pipelines so far, the mean of all of them.

    Returns:
      (iterations int[T], values float[T]): the distinct iterations in order and the mean.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    its = np.unique(iteration)
    values, best = [], np.array([])
    for it in its:
        r = reward[(iteration == it) & np.isfinite(reward)]
        best = np.sort(np.concatenate([best, r]))[::-1][:k]
        values.append(best.mean() if best.size else math.nan)
    return its, np.array(values)


def pareto_front(flops: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points on the front of max accuracy for at most that many FLOPs.

    A point is on the front when every point with no more FLOPs has lower accuracy (of equal
    points, the first). Returns int[F] in increasing FLOPs (and accuracy).
    """
    flops, accuracy = np.asarray(flops, float), np.asarray(accuracy, float)
    ok = np.flatnonzero(np.isfinite(flops) & np.isfinite(accuracy))
    order = ok[np.lexsort((ok, -accuracy[ok], flops[ok]))]  # FLOPs up, accuracy down, index up
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.array(front, dtype=int)


def normalized_entropy(tokens: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Empirical entropy of each decision's choices over a sample, scaled to [0, 1].

    Args:
      tokens: int[N, D], N sampled actions of D decisions.
      sizes: int[D], the number of choices of each decision.

    Returns:
      float[D]: H / log(min(size, N)), so 1 means as spread as N samples of that decision can
      be, 0 one choice only (also for a decision with one choice, or N = 1).
    """
    n = tokens.shape[0]
    out = np.zeros(tokens.shape[1])
    for d, size in enumerate(sizes):
        cap = min(int(size), n)
        if cap > 1:
            p = np.bincount(tokens[:, d], minlength=int(size)) / n
            p = p[p > 0]
            out[d] = max(0.0, float(-(p * np.log(p)).sum() / math.log(cap)))
    return out


def run_pareto_front(run: Run) -> np.ndarray:
    """Indices into `run.trials` of its Pareto front; failed pipelines are not candidates."""
    c = columns(run)
    ok = np.flatnonzero(~c.failed & np.isfinite(c.accuracy))
    return ok[pareto_front(c.flops[ok], c.accuracy[ok])]


class ActionEntropy(NamedTuple):
    """Normalized entropy of every decision of every agent over columns of iterations."""

    starts: np.ndarray  # int[B]: the first iteration of each column
    ends: np.ndarray  # int[B]: the last iteration of each column
    entropy: np.ndarray  # float[R, B]: rows are the decisions of all agents, agent after agent
    rows: list[tuple[str, str]]  # (agent, decision name) of each row
    dominant: np.ndarray  # int[R]: the most frequent token of each row in the last column
    share: np.ndarray  # float[R]: its fraction of the last column


def action_entropy(run: Run) -> ActionEntropy | None:
    """Columns of consecutive iterations with at least MIN_ENTROPY_SAMPLES pipelines each."""
    trials = [t for t in run.trials if t.get("tokens")]
    if not trials:
        return None
    agents = list(run.space.agents) if run.space else list(trials[0]["tokens"])
    try:
        tokens = {a: np.array([t["tokens"][a] for t in trials], dtype=int) for a in agents}
    except (KeyError, TypeError, ValueError):  # agents or lengths differ between records
        return None
    if any(v.ndim != 2 or v.shape[1] == 0 or (v < 0).any() for v in tokens.values()):
        return None
    iteration = np.array([t["iteration"] for t in trials])
    its = np.unique(iteration)
    per_column = max(1, math.ceil(MIN_ENTROPY_SAMPLES * len(its) / len(trials)))
    per_column = max(per_column, math.ceil(len(its) / MAX_ENTROPY_COLUMNS))
    # Columns are cut from the end, so the last one (the settled decisions) is a full one.
    cuts = list(range(len(its), 0, -per_column))[::-1]
    groups = [its[max(0, c - per_column):c] for c in cuts]
    rows, blocks, kept = [], [], []
    for a in agents:
        if run.space:
            names = [d.name for d in run.space[a].decisions]
            sizes = run.space[a].sizes
        else:  # no space: the largest token seen stands in for the number of choices
            names = [str(d) for d in range(tokens[a].shape[1])]
            sizes = tokens[a].max(axis=0) + 1
        keep = np.flatnonzero(np.asarray(sizes) > 1)  # a single choice is no decision
        if not keep.size:
            continue
        rows += [(a, names[d]) for d in keep]
        blocks.append(np.stack([normalized_entropy(tokens[a][np.isin(iteration, g)], sizes)[keep]
                                for g in groups], axis=1))
        kept.append((a, keep))
    if not rows:
        return None
    last = np.isin(iteration, groups[-1])
    counts = [np.bincount(tokens[a][last][:, d]) for a, keep in kept for d in keep]
    return ActionEntropy(np.array([g[0] for g in groups]), np.array([g[-1] for g in groups]),
                         np.concatenate(blocks), rows,
                         np.array([c.argmax() for c in counts]),
                         np.array([c.max() / c.sum() for c in counts]))


# ---------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_top_k(runs: Sequence[Run], k: int, path: str) -> None:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for run, color in zip(runs, _colors(len(runs))):
        c = columns(run)
        its, topk = top_k_so_far(c.iteration, c.reward, k)
        _, top1 = top_k_so_far(c.iteration, c.reward, 1)
        ax.plot(its, topk, "-o", color=color, ms=3, label=f"{run.label}: top-{k} mean")
        ax.plot(its, top1, "--", color=color, label=f"{run.label}: best")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="iteration (batch of pipelines)", ylabel="reward",
           title=f"Mean reward of the top-{k} pipelines found so far (dashed: best)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)


def plot_rewards(runs: Sequence[Run], path: str) -> None:
    ncols = min(3, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig = _figure(4.5 * ncols, 3.5 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, run, color in zip(axes, runs, _colors(len(runs))):
        c = columns(run)
        ok = ~c.failed
        ax.scatter(c.iteration[ok], c.reward[ok], s=12, alpha=0.6, color=color, label="pipeline")
        if c.failed.any():
            bad = c.failed & np.isfinite(c.reward)
            ax.scatter(c.iteration[bad], c.reward[bad], marker="x", s=18, color="0.55",
                       label=f"failed ({int(c.failed.sum())})")
        its = np.unique(c.iteration)
        means = [np.nanmean(np.where(np.isfinite(c.reward), c.reward, np.nan)[c.iteration == i])
                 if np.isfinite(c.reward[c.iteration == i]).any() else np.nan for i in its]
        ax.plot(its, means, color="k", lw=1, label="batch mean")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set(title=run.label, xlabel="iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("reward")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.suptitle("Reward of every pipeline per iteration")
    fig.savefig(path)


def plot_pareto(runs: Sequence[Run], path: str) -> None:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    all_flops = []
    any_failed = False
    for run, color in zip(runs, _colors(len(runs))):
        c = columns(run)
        ok = ~c.failed & np.isfinite(c.accuracy)
        ax.scatter(c.flops[ok], c.accuracy[ok], s=12, alpha=0.5, color=color, label=run.label)
        bad = c.failed & np.isfinite(c.accuracy)
        if bad.any():
            ax.scatter(c.flops[bad], c.accuracy[bad], marker="x", s=18, color="0.55")
            any_failed = True
        front = run_pareto_front(run)
        if front.size:
            x = np.append(c.flops[front], c.flops[ok].max())
            y = np.append(c.accuracy[front], c.accuracy[front][-1])
            ax.step(x, y, where="post", color=color, lw=1.5)
        all_flops.append(c.flops)
    if any_failed:
        ax.scatter([], [], marker="x", color="0.55", label="failed (not on the front)")
    flops = np.concatenate(all_flops)
    title = "Accuracy against FLOPs; lines: Pareto front (best accuracy at most that FLOPs)"
    if not np.any(flops > 0):
        title += "\n(no FLOPs recorded in these trial logs)"
    elif np.all(flops > 0) and flops.max() > 10 * flops.min():
        ax.set_xscale("log")
    ax.set(xlabel="FLOPs", ylabel="validation accuracy", title=title)
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)


def plot_actions(run: Run, entropy: ActionEntropy, path: str) -> None:
    """Rows: every decision of every agent; columns: iterations; color: normalized entropy."""
    n_rows, n_cols = entropy.entropy.shape
    fig = _figure(min(7 + 0.1 * n_cols, 14), min(2.5 + 0.16 * n_rows, 16))
    ax = fig.add_subplot()
    # Columns may span unequal numbers of iterations (the first takes the remainder).
    x = np.append(entropy.starts, entropy.ends[-1] + 1) - 0.5
    image = ax.pcolormesh(x, np.arange(n_rows + 1) - 0.5, entropy.entropy, cmap="viridis",
                          vmin=0, vmax=1)
    ax.set_ylim(n_rows - 0.5, -0.5)
    fig.colorbar(image, ax=ax, label="normalized entropy", shrink=0.6)
    agents = [a for a, _ in itertools.groupby(entropy.rows, key=lambda r: r[0])]
    spans, start = [], 0
    for a in agents:
        n = sum(1 for r in entropy.rows if r[0] == a)
        spans.append((a, start, start + n))
        start += n
    for _, _, end in spans[:-1]:
        ax.axhline(end - 0.5, color="w", lw=1.5)
    if n_rows <= 60:
        ax.set_yticks(range(n_rows), [f"{a}: {d}" for a, d in entropy.rows], fontsize=6)
    else:  # too many decisions to name: name the agents
        ax.set_yticks([(s + e - 1) / 2 for _, s, e in spans], [a for a, _, _ in spans])
    ax.set_xlabel("iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{run.label}\nhow settled each decision is: normalized entropy of its "
                 f"choices,\n{_column_note(entropy)}", fontsize="medium")
    fig.savefig(path)


def _column_note(entropy: ActionEntropy) -> str:
    widths = entropy.ends - entropy.starts + 1
    per = "one column per iteration" if widths.max() == 1 else (
        f"columns of up to {int(widths.max())} iterations")
    return f"{per}; decisions with one choice left out"


# ---------------------------------------------------------------------------------- summary
def compact(value: Any) -> str:
    """One-line rendering of a decoded config: dicts as (key=value, ...), lists as [...]."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={compact(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pipeline_text(pipeline: Any) -> str:
    if not isinstance(pipeline, dict):
        return compact(pipeline)
    lines = []
    for agent, value in pipeline.items():
        body = compact(value)
        if isinstance(value, dict):
            body = body[1:-1]  # the agent's own parentheses say nothing
        lines.append(textwrap.fill(body, width=100, initial_indent=f"{agent}: ",
                                   subsequent_indent=" " * (len(agent) + 2),
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def _si(x: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:g}"


def _choice(run: Run, agent: str, decision: str, token: int) -> str:
    if run.space:
        d = next(d for d in run.space[agent].decisions if d.name == decision)
        return compact(d.choices[token])
    return f"choice #{token}"


def run_summary(run: Run, top_k: int, entropy: ActionEntropy | None) -> str:
    c = columns(run)
    its = np.unique(c.iteration)
    _, topk = top_k_so_far(c.iteration, c.reward, top_k)
    finite = np.flatnonzero(np.isfinite(c.reward))
    best = finite[np.argsort(-c.reward[finite], kind="stable")][:TOP_SHOWN]
    reasons: dict[str, int] = {}
    for t in run.trials:
        if t.get("failure") is not None:
            reasons[str(t["failure"])] = reasons.get(str(t["failure"]), 0) + 1
    best_reward = f"{c.reward[best[0]]:.4f}" if best.size else "-"
    top_mean = f"{topk[-1]:.4f}" if best.size else "-"
    out = [f"## {run.label}", "", f"Workdir: `{run.workdir}`" +
           (" (a torn last line of the trial log, from a killed run, was left out)"
            if run.torn else ""), "",
           "| algorithm | seed | iterations | pipelines | failures | best reward | "
           f"top-{top_k} mean |", "|---|---|---|---|---|---|---|",
           f"| {run.algorithm or '?'} | {'?' if run.seed is None else run.seed} | {len(its)} | "
           f"{len(run.trials)} | {int(c.failed.sum())} | {best_reward} | {top_mean} |", ""]
    if reasons:
        out += ["Failures: " + "; ".join(f"{n} x {r!r}" for r, n in sorted(
            reasons.items(), key=lambda kv: -kv[1])), ""]
    out += [f"### Top {len(best)} pipelines", ""]
    for rank, i in enumerate(best, 1):
        t = run.trials[i]
        out += [f"{rank}. reward **{c.reward[i]:.4f}**, accuracy {c.accuracy[i]:.4f}, "
                f"{_si(c.flops[i])} FLOPs, {_si(c.params[i])} params (iteration "
                f"{t['iteration']}, pipeline {t.get('index', '?')})", "",
                "   ```text", textwrap.indent(_pipeline_text(t.get("pipeline")), "   "),
                "   ```", ""]
    if entropy is not None:
        order = np.argsort(entropy.entropy[:, -1], kind="stable")[:5]
        last = (f"iteration {entropy.ends[-1]}" if entropy.starts[-1] == entropy.ends[-1]
                else f"iterations {entropy.starts[-1]}-{entropy.ends[-1]}")
        out += [f"### Most settled decisions ({last})", "",
                "| agent | decision | most frequent choice | share | normalized entropy |",
                "|---|---|---|---|---|"]
        out += [f"| {entropy.rows[r][0]} | {entropy.rows[r][1]} | "
                f"{_choice(run, *entropy.rows[r], int(entropy.dominant[r]))} | "
                f"{entropy.share[r]:.0%} | {entropy.entropy[r, -1]:.2f} |" for r in order]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- report
def write_report(workdirs: Sequence[str], out: str | None = None, top_k: int = 10
                 ) -> dict[str, str]:
    """Writes the plots and summary.md; returns {name: path} of what was written."""
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}")
    if not workdirs:
        raise UserError("give at least one workdir")
    runs = load_runs(workdirs)
    out = out or os.path.join(workdirs[0], "report")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror or e}") from e
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out} is not writable")
    paths = {"topk": "topk.png", "rewards": "rewards.png", "pareto": "pareto.png"}
    plot_top_k(runs, top_k, os.path.join(out, paths["topk"]))
    plot_rewards(runs, os.path.join(out, paths["rewards"]))
    plot_pareto(runs, os.path.join(out, paths["pareto"]))
    sections = []
    for i, run in enumerate(runs):
        entropy = action_entropy(run)
        if entropy is not None:
            name = f"actions_{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', _dir_name(run.workdir))}.png"
            plot_actions(run, entropy, os.path.join(out, name))
            paths[f"actions_{i}"] = name
        sections.append(run_summary(run, top_k, entropy) + (
            f"\n![actions]({paths[f'actions_{i}']})\n" if entropy is not None else ""))
    header = ["# Search report", "", ", ".join(f"`{r.workdir}`" for r in runs), "",
              f"![top-{top_k}](topk.png)", "", "![rewards](rewards.png)", "",
              "![pareto](pareto.png)", ""]
    with open(os.path.join(out, SUMMARY), "w") as f:
        f.write("\n".join(header + sections))
    paths["summary"] = SUMMARY
    return {k: os.path.join(out, v) for k, v in paths.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ma2ml_jax.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="search workdirs")
    parser.add_argument("--out", default=None, help="output folder (default: DIR/report)")
    parser.add_argument("--top_k", type=int, default=10, help="k of the top-k curve")
    parser.add_argument("--traceback", action="store_true", help="full traceback on bad input")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.dirs, args.out, args.top_k)
    except UserError as e:
        if cli.want_traceback(args.traceback):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {paths['summary']} and {len(paths) - 1} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
