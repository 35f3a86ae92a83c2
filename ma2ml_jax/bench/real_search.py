r"""Searchers side by side on real proxy training: best-so-far validation reward over seeds.

    python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py \
        --searchers=ma2ml,ma2ml_frozen --seeds=2 --out=runs/real_search
    python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py:local \
        --searchers=ma2ml,random --seeds=1 --out=/tmp/rs   # a smoke run

Each (searcher, seed) is one `search.run` of the config with `seed` set and the searcher's
overrides (SEARCHERS), in its own workdir under --out, so an interrupted benchmark resumes where
it stopped and a finished run is read back, not repeated. The same seed gives every searcher the
same data split and evaluation keys; a searcher whose first batch is uniform (ma2ml and its
frozen ablation) evaluates the same first pipelines. Reported per searcher over the seeds: the
best validation reward after each iteration (median, min and max), the evaluations it took to
come within --gap of the best reward any run found, and the wall time; a PNG shows best-so-far
against pipelines evaluated and against wall time.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# name -> config overrides ({"section.key": value})
SEARCHERS: dict[str, dict[str, Any]] = {
    "ma2ml": {},
    # The default with frozen actors (uniform policies): what the agents add is the distance.
    "ma2ml_frozen": {"ma2ml.actor_lr": 1e-9},
    "ma2ml_paper": {"search.algorithm": "ma2ml_paper"},
    "tpe": {"search.algorithm": "tpe"},
    "random": {"search.algorithm": "random"},
    "local": {"search.algorithm": "local"},
    "evolution": {"search.algorithm": "evolution"},
}


def run_config(config, searcher: str, seed: int):
    """The config of one run: `seed` and the searcher's overrides, on a copy."""
    c = config.copy_and_resolve_references()
    c.seed = seed
    for key, value in SEARCHERS[searcher].items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def curves(trials: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Best-so-far reward per evaluation, and the cumulative wall time, in trial-log order."""
    reward = np.array([t["reward"] for t in trials], np.float64)
    wall = np.array([t.get("wall_time") or 0.0 for t in trials], np.float64)
    return {"best": np.maximum.accumulate(reward), "wall": np.cumsum(wall)}


def run_all(config, searchers: Sequence[str], seeds: Sequence[int], out: str,
            progress: bool = True) -> dict[str, dict[int, dict[str, Any]]]:
    """{searcher: {seed: {"best": [...], "wall": [...], "best_pipeline": ...}}}."""
    from ma2ml_jax import search

    results: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:  # every searcher on a seed before the next seed: paired runs first
        for name in searchers:
            workdir = os.path.join(out, name, f"seed{seed}")
            print(f"{name} seed {seed}: {workdir}", flush=True)
            r = search.run(run_config(config, name, seed), workdir, progress=progress)
            c = curves(r.trials)
            results.setdefault(name, {})[seed] = {
                "best": c["best"].tolist(), "wall": c["wall"].tolist(),
                "best_reward": float(r.best_reward), "best_pipeline": r.best_pipeline,
                "failed": int(sum(bool(t["failure"]) for t in r.trials))}
    return results


def evals_within(best: Sequence[float], level: float) -> float:
    """Evaluations until best-so-far reaches `level` (inf: never)."""
    hit = np.nonzero(np.asarray(best) >= level - 1e-9)[0]
    return float(hit[0] + 1) if len(hit) else np.inf


def summarize(results: Mapping[str, Mapping[int, Mapping[str, Any]]], per_iteration: int,
              gap: float) -> dict[str, Any]:
    """Per searcher: final best (median, min, max), best after each iteration (median), the
    evaluations to within `gap` of the best reward of any run (median; runs that got there),
    and the median wall time of a run.
    """
    top = max(v["best_reward"] for per in results.values() for v in per.values())
    out: dict[str, Any] = {"level": top - gap, "searchers": {}}
    for name, per in results.items():
        runs = list(per.values())
        final = np.array([r["best"][-1] for r in runs])
        n = min(len(r["best"]) for r in runs)
        by_iteration = np.median([r["best"][per_iteration - 1:n:per_iteration] for r in runs], 0)
        hits = [evals_within(r["best"], top - gap) for r in runs]
        out["searchers"][name] = {
            "seeds": len(runs), "final_median": float(np.median(final)),
            "final_min": float(final.min()), "final_max": float(final.max()),
            "by_iteration": by_iteration.tolist(),
            "evals_to_level": float(np.median(hits)), "reached": int(np.isfinite(hits).sum()),
            "wall_s": float(np.median([r["wall"][-1] for r in runs])),
            "failed": int(sum(r["failed"] for r in runs))}
    return out


def table(summary: Mapping[str, Any], budget: int) -> str:
    lines = [f"| searcher | seeds | best reward: median [min, max] | evaluations to "
             f"{summary['level']:.4f}: median (runs) | pipeline wall time, median run (s) | "
             "failed |", "|---|---|---|---|---|---|"]
    for name, s in summary["searchers"].items():
        e = s["evals_to_level"]
        evals = f"{e:.0f}" if np.isfinite(e) else f"> {budget}"
        lines.append(f"| {name} | {s['seeds']} | {s['final_median']:.4f} [{s['final_min']:.4f}, "
                     f"{s['final_max']:.4f}] | {evals} ({s['reached']}/{s['seeds']}) | "
                     f"{s['wall_s']:.0f} | {s['failed']} |")
    return "\n".join(lines)


def plot(results: Mapping[str, Mapping[int, Mapping[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for name, per in results.items():
        runs = list(per.values())
        n = min(len(r["best"]) for r in runs)
        best = np.array([r["best"][:n] for r in runs])
        x = np.arange(1, n + 1)
        line, = ax_n.plot(x, np.median(best, 0), label=name)
        ax_n.fill_between(x, best.min(0), best.max(0), color=line.get_color(), alpha=0.15)
        for r in runs:
            ax_t.plot(r["wall"], r["best"], color=line.get_color(), lw=0.8)
    ax_n.set(xlabel="pipelines evaluated", ylabel="best validation reward so far",
             title="median over seeds, band: min to max")
    ax_t.set(xlabel="pipeline wall time (s)", title="each seed")
    ax_n.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    from ma2ml_jax import cli
    from ma2ml_jax import config as config_lib
    from ma2ml_jax.errors import UserError

    config_lib.setup_jax_for_cli()  # the command lines' compilation cache and logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/full_space_digits.py",
                        help="experiment config, path[:argument]")
    parser.add_argument("--searchers", default="ma2ml,ma2ml_frozen",
                        help=f"comma-separated, of {', '.join(SEARCHERS)}")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--gap", type=float, default=0.01,
                        help="a run reaches the level when within gap of the best of all runs")
    parser.add_argument("--out", default="runs/real_search")
    parser.add_argument("--noprogress", action="store_true")
    args = parser.parse_args(argv)
    names = args.searchers.split(",")
    unknown = [n for n in names if n not in SEARCHERS]
    if unknown:
        parser.error(f"unknown searchers {unknown}; choose from {', '.join(SEARCHERS)}")
    try:
        config = cli.load_config(args.config)
    except UserError as e:
        parser.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"{len(names) * len(seeds)} searches ({', '.join(names)} x {len(seeds)} seeds) of "
          f"{config.search.iterations} iterations x {config.search.pipelines} pipelines of "
          f"{args.config}, each resumable in its workdir under {args.out}"
          + ("" if args.config.endswith(":local") else
             f"; --config={args.config.partition(':')[0]}:local is the smoke run"), flush=True)
    try:
        results = run_all(config, names, seeds, args.out, progress=not args.noprogress)
    except UserError as e:  # a bad config or data, or an --out holding other runs
        raise SystemExit(f"error: {e}") from None
    per_iteration = config.search.pipelines
    summary = summarize(results, per_iteration, args.gap)
    budget = per_iteration * config.search.iterations
    print("\n" + table(summary, budget))
    png = os.path.join(args.out, "real_search.png")
    plot(results, png)
    path = os.path.join(args.out, "real_search.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "summary": summary,
                   "results": {n: {str(s): v for s, v in per.items()}
                               for n, per in results.items()}}, f, indent=1, default=float)
    print(f"plot: {png}\nresults: {path}")


if __name__ == "__main__":
    main()
