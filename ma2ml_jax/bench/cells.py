r"""Compile time and step time of the cell-space networks against the number of cells.

    python -m ma2ml_jax.bench.cells                                  # 2, 5 and 17 cells
    python -m ma2ml_jax.bench.cells --cells=2,5 --networks=scan,exact --timeout=300
    python -m ma2ml_jax.bench.cells --lower_only --cells=2,5,17,29  # program size, no compiling
    python -m ma2ml_jax.bench.cells --quick     # any of these at its smallest: 2 cells of 2 blocks

Networks, each (network, cells) pair in its own process (its own caches and peak memory) with a
timeout; a network over the timeout is not run at larger sizes (its program only grows):
  per_op    `MaskedCellNet(op_families=False, scan_cells=False)`: every op slot of every cell
            switches over its 13 operations (x 2 strides in a reduction cell), each with its own
            variables, and every cell is its own module.
  families  `MaskedCellNet(scan_cells=False)`: a slot switches over the 6 operation families, one
            masked superkernel each (`models/cell_masked.py`); every cell its own module.
  scan      `MaskedCellNet()`, the default: families, and the cells of one kind one `nn.scan`.
  exact     `CellNet` of the architecture (compiled again for every architecture).

Workload: configs/cifar10.py (NASNet cells of 5 blocks, 25 AutoAugment sub-policies inside the
step, the CIFAR recipe space), one sampled pipeline, `--channels` channels, reduction cells where
DARTS puts them (2 cells: at 2; 5: at 2 and 4, as `cifar10.py:local`; 17: at 6 and 12, the
paper's), `--batch` real CIFAR-10 images (../shared/data/cifar10_jpeg.npz; random ones otherwise,
said in the output). Measured: seconds to compile the initialisation and the training step
(`proxy.make_trainer`, what the evaluator jits: augmentation, forward, backward, the optimizers),
the median time of a training step after one warm-up step, and the process's peak RSS. With
`--lower_only`, nothing is compiled: the seconds to trace and lower each program to StableHLO and
its size in lines of StableHLO text, what XLA's compile time grows with.

The default sizes compile for hours on a small CPU (docs/BENCHMARKS.md). `--quick` measures the
networks asked for at 2 cells of 2-block cells (QUICK), the same code path at its smallest, what
the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ma2ml_jax import cli
from ma2ml_jax.spaces import make_pipeline_space

_REPO_ROOT = cli.REPO_ROOT
NETWORKS = ("per_op", "families", "scan", "exact")
# --quick: the smallest network of each kind, one timed step
QUICK = {"cells": "2", "blocks": 2, "channels": 4, "batch": 8, "steps": 1}


def reduction_cells(cells: int) -> tuple[int, ...]:
    """DARTS' reduction positions (layers // 3, 2 * layers // 3, 0-based) as 1-based cells."""
    if cells < 3:
        return (cells,)
    return tuple(sorted({cells // 3 + 1, 2 * cells // 3 + 1}))


def build(network: str, cells: int, channels: int, seed: int, blocks: int = 5):
    """(network module, architecture arrays or None, hp, policy) of one sampled CIFAR pipeline,
    its cells of `blocks` blocks.
    """
    import jax

    from ma2ml_jax import models, proxy
    from ma2ml_jax.data import steps_per_epoch
    from ma2ml_jax.evaluate import agent_roles
    from ma2ml_jax.models.cell_masked import MaskedCellNet, cell_arrays
    from ma2ml_jax.spaces import augment as augment_space
    from ma2ml_jax.spaces import recipe as recipe_space

    config = cli.load_config("configs/cifar10.py", root=cli.REPO_ROOT)
    config.model.cells = cells
    config.model.reduction_cells = reduction_cells(cells)
    config.model.cell_channels = channels
    config.spaces.nas.num_blocks = blocks
    space = make_pipeline_space(config.spaces)
    roles = agent_roles(space)
    pipeline = space.decode(space.sample(jax.random.key(seed), 1), 0)
    arch = pipeline[roles["arch"]]
    hp = proxy.Hyperparams.from_recipe(
        recipe_space.to_hparams(space[roles["hpo"]], pipeline[roles["hpo"]]),
        steps_per_epoch(40_000, 128))
    aspace = space[roles["aug"]]
    policy = augment_space.to_policy(aspace, np.asarray(aspace.encode(pipeline[roles["aug"]])))
    if network == "exact":
        net = models.make_network("cell", arch, 10, config.model)
        return net, None, hp, policy
    settings = {"per_op": dict(op_families=False, scan_cells=False),
                "families": dict(scan_cells=False), "scan": {}}[network]
    # XLA's depthwise convolution, as `models.make_network_for` builds the masked network.
    net = MaskedCellNet(10, cells=cells, reduction_cells=reduction_cells(cells),
                        channels=channels, depthwise_impl="conv", **settings)
    return net, cell_arrays(arch), hp, policy


def run_one(network: str, cells: int, args) -> None:
    """Measures one network in this process; prints a RESULT line after each measurement."""
    import jax

    from ma2ml_jax import proxy
    from ma2ml_jax.bench.augment import load_batch

    result: dict[str, Any] = {"network": network, "cells": cells,
                              "reduction_cells": reduction_cells(cells)}

    def report(**values):
        result.update(values)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        print("RESULT " + json.dumps(result), flush=True)

    images, labels, source = load_batch(args.batch, args.data)
    report(data=source, device=str(jax.devices()[0].device_kind))
    net, arrays, hp, policy = build(network, cells, args.channels, args.seed, args.blocks)
    mean = images.reshape(-1, 3).mean(0).astype(np.float32)
    std = images.reshape(-1, 3).std(0).astype(np.float32)
    trainer = proxy.make_trainer(net, image_shape=images.shape[1:], num_classes=10, mean=mean,
                                 std=std, total_steps=100, augment_images=True)
    extra = () if arrays is None else (arrays,)
    key = jax.random.key(0)

    if args.lower_only:
        t0 = time.perf_counter()
        lowered = jax.jit(trainer.init).lower(key, *extra)
        report(init_lower_s=time.perf_counter() - t0,
               init_hlo_lines=len(lowered.as_text().splitlines()))
        state = jax.eval_shape(trainer.init, key, *extra)
        t0 = time.perf_counter()
        lowered = jax.jit(trainer.train_step).lower(state, images, labels, hp, policy, key, *extra)
        report(step_lower_s=time.perf_counter() - t0,
               step_hlo_lines=len(lowered.as_text().splitlines()))
        return

    t0 = time.perf_counter()
    init = jax.jit(trainer.init).lower(key, *extra).compile()
    report(init_compile_s=time.perf_counter() - t0)
    state = init(key, *extra)

    step_args = (images, labels, hp, policy, key, *extra)
    t0 = time.perf_counter()
    step = jax.jit(trainer.train_step, donate_argnums=0).lower(state, *step_args).compile()
    report(step_compile_s=time.perf_counter() - t0)

    times = []
    for _ in range(1 + args.steps):
        t0 = time.perf_counter()
        state, loss = step(state, *step_args)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    report(step_s=float(np.median(times[1:])), loss=float(loss))


def _fmt(r: dict[str, Any] | None, key: str, timeout: float) -> str:
    if r is None:
        return "-"
    if key in r:
        return f"{r[key] * 1e3:.0f} ms" if key == "step_s" else f"{r[key]:.1f}"
    if r.get("skipped"):
        return f"> {timeout:.0f} (not run)"
    if r.get("timed_out") or r.get("error"):
        # The measurement in progress when the process stopped, and those after it.
        order = ("init_compile_s", "step_compile_s", "step_s")
        done = [k for k in order if k in r]
        first_missing = order[len(done)]
        if key == first_missing:
            spent = r["wall_s"] - sum(r[k] for k in done if k != "step_s")
            return f"> {spent:.0f}" if r.get("timed_out") else "failed"
        return "-"
    return "-"


def lower_table(results: list[dict[str, Any]]) -> str:
    """Markdown of a --lower_only run: one row per (cells, network)."""
    rows = ["| cells (reductions) | network | compiled cell bodies | init: lower (s) / StableHLO "
            "lines | train step: lower (s) / StableHLO lines |", "|---" * 5 + "|"]
    for r in results:
        reductions = ", ".join(str(k) for k in reduction_cells(r["cells"]))
        cells = ("-" if r["network"] == "exact" else
                 str(r["cells"] if r["network"] != "scan" else len(_runs(r["cells"]))))
        parts = []
        for phase in ("init", "step"):
            if f"{phase}_hlo_lines" in r:
                parts.append(f"{r[f'{phase}_lower_s']:.1f} / {r[f'{phase}_hlo_lines']:,}")
            else:
                parts.append("failed" if r.get("error") or r.get("timed_out") else "-")
        rows.append(f"| {r['cells']} ({reductions}) | {r['network']} | {cells} | {parts[0]} | "
                    f"{parts[1]} |")
    return "\n".join(rows)


def _runs(cells: int):
    from ma2ml_jax.models.cell_masked import cell_runs

    return cell_runs(cells, reduction_cells(cells), 8, 5, 3)


def table(results: list[dict[str, Any]], timeout: float) -> str:
    """Markdown: one row per (cells, network)."""
    rows = ["| cells (reductions) | network | compile init (s) | compile train step (s) | "
            "train step | peak RSS |", "|---" * 6 + "|"]
    for r in results:
        rss = f"{r['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in r else "-"
        reductions = ", ".join(str(k) for k in reduction_cells(r["cells"]))
        rows.append(f"| {r['cells']} ({reductions}) | {r['network']} | "
                    f"{_fmt(r, 'init_compile_s', timeout)} | "
                    f"{_fmt(r, 'step_compile_s', timeout)} | {_fmt(r, 'step_s', timeout)} | "
                    f"{rss} |")
    return "\n".join(rows)


def parse(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="2,5,17")
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--channels", type=int, default=8, help="channels of the first cells")
    p.add_argument("--blocks", type=int, default=5, help="blocks of a cell (the paper's: 5)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    p.add_argument("--seed", type=int, default=0, help="which pipeline is sampled")
    p.add_argument("--timeout", type=float, default=900, help="seconds per (network, cells)")
    p.add_argument("--data", default=os.path.join(_REPO_ROOT, "..", "shared", "data",
                                                  "cifar10_jpeg.npz"))
    p.add_argument("--json", default="cells.json", help="where to write the results")
    p.add_argument("--lower_only", action="store_true",
                   help="only trace and lower the programs: seconds and StableHLO size")
    p.add_argument("--quick", action="store_true",
                   help="the smallest run: " + ", ".join(f"--{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def _child(network: str, cells: int, args, forwarded: list[str]) -> dict[str, Any]:
    """Runs one measurement in a fresh process; its last RESULT line, with wall_s and any
    timeout or error.
    """
    cmd = [sys.executable, "-m", "ma2ml_jax.bench.cells", f"--child={network}:{cells}",
           *forwarded]
    env = dict(os.environ)
    env.pop("MA2ML_JAX_CACHE", None)  # every measurement compiles from scratch
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              cwd=_REPO_ROOT, env=env)
        out, extra = proc.stdout, {}
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            extra = {"error": tail[:200]}
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        extra = {"timed_out": True}
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT "):]) if lines else {"network": network,
                                                                    "cells": cells}
    return {**result, **extra, "wall_s": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        network, cells = args.child.split(":")
        run_one(network, int(cells), args)
        return
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])
                 if not a.startswith(("--cells", "--networks", "--json"))]
    sizes = sorted(int(c) for c in args.cells.split(","))
    networks = args.networks.split(",")
    print(f"load average at start: {os.getloadavg()}; cells {', '.join(map(str, sizes))} of "
          f"{args.blocks} blocks, {args.channels} channels, batch {args.batch}, networks "
          f"{', '.join(networks)}: {len(sizes) * len(networks)} measurements, each in its own "
          f"process, up to {args.timeout:.0f} s each"
          + ("" if args.quick else "; --quick runs them at their smallest"), flush=True)
    results, over = [], set()
    for cells in sizes:
        for network in networks:
            if network in over:
                results.append({"network": network, "cells": cells, "skipped": True})
                continue
            print(f"[{network}, {cells} cells] {'lowering' if args.lower_only else 'compiling'}"
                  " in its own process ...", flush=True)
            r = _child(network, cells, args, forwarded)
            results.append(r)
            if r.get("timed_out"):
                over.add(network)
            print(f"[{network}, {cells} cells] {r.get('data', '')}: "
                  + ", ".join(f"{k} {r[k]:.1f}" for k in ("init_compile_s", "step_compile_s",
                                                           "step_s", "init_lower_s",
                                                           "init_hlo_lines", "step_lower_s",
                                                           "step_hlo_lines", "wall_s") if k in r)
                  + (" TIMED OUT" if r.get("timed_out") else "")
                  + (f" ERROR {r['error']}" if r.get("error") else ""), flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print(lower_table(results) if args.lower_only else table(results, args.timeout), flush=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
