r"""Pipeline-evaluation throughput: the project's strategies against a naive port, side by side.

    python -m ma2ml_jax.bench.throughput                  # sized by the backend (--workload=auto)
    python -m ma2ml_jax.bench.throughput --workload=cifar --variants=naive,loop --cells=2
    python -m ma2ml_jax.bench.throughput --quick          # a smoke run of the same code path

Workloads (`--workload`; `auto`, the default, is `default` on a CPU and `cifar` elsewhere, and the
output's first line says which ran):
  cifar    the CIFAR-10 setting of configs/cifar10.py (25 AutoAugment sub-policies, the NASNet
           cell space, the CIFAR recipe space, 24 pipelines an iteration), shortened to fit one
           accelerator: fewer cells, a slice of the training images, one short epoch. Made for an
           accelerator: on a CPU its cell networks compile for many minutes per variant
           (docs/BENCHMARKS.md, "The CIFAR cell workload"). Real CIFAR-10 images come from
           ../shared/data/cifar10_jpeg.npz when it exists (random images otherwise, said in the
           output).
  default  configs/default.py as the README's first command runs it (bundled digits, the tiny
           macro space), 8 pipelines an iteration; on a CPU only the naive port and the CPU
           default ("loop") run unless --variants names more.
Every variant evaluates the same pipelines (the same seeds), for `--iterations` iterations.
`--quick` shrinks whichever workload runs to one iteration of 2 pipelines (cifar: 2 cells of 2
blocks and 8 channels, one batch of 32 training images), the variants as given: what the tests
run.

Variants (each in its own process, so compile caches and peak memory are its own):
  naive      what a straightforward port would write: one pipeline at a time, an exactly-shaped
             network compiled per architecture, AutoAugment on the host with PIL. Its depthwise
             convolutions are the project's own choice for the backend (shifted multiply-adds on
             CPU, `models.layers.depthwise_taps`; XLA's convolution elsewhere), the same
             kernels as the masked network, so the ratios measure evaluation, not the kernel.
  naive_grouped  the naive port with XLA's grouped convolution for depthwise layers everywhere
             (what a port gets by default; on CPU a slow path: bench/depthwise.py).
  exact      the naive port with augmentation inside the jitted step on the device.
  STRATEGY[+scan]  the masked network (one program for every architecture) with the pipelines
             trained by a `sharded.py` strategy (loop, unrolled, vmap, map), steps by a host loop
             (default) or `+scan` (an epoch in one lax.scan).
  auto       the project's default: `evaluate.network = "auto"`, `evaluate.strategy = "auto"`.

Printed per variant: pipelines per hour and training images per second (first iteration, with
compilation; and the later ones), the ratio of each to the naive baseline, compilations in each
iteration, useful FLOP/s (the unmasked multiply-adds of the pipelines' own architectures, x2 for
FLOPs, x3 for forward + backward) against the machine's measured float32 matmul peak, and peak
memory (device peak on accelerators; the process's peak RSS on CPU). A JSON file keeps it all.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ma2ml_jax import cli
from ma2ml_jax.spaces import make_pipeline_space

_REPO_ROOT = cli.REPO_ROOT
DEFAULT_VARIANTS = ("naive", "naive_grouped", "exact", "auto", "loop", "loop+scan", "map",
                    "unrolled", "vmap")
# On a CPU: the naive port against the project's CPU default (`evaluate.strategy="auto"` is
# "loop" there); every variant is a process that compiles its own programs.
CPU_VARIANTS = ("naive", "loop")
WORKLOADS = ("auto", "cifar", "default")
PIPELINES = {"cifar": 24, "default": 8}
# --quick: the smallest run of the same code path (the workload's flags it overrides).
QUICK = {"pipelines": 2, "iterations": 1, "exact_iterations": 1, "epochs": 1, "cells": 2,
         "reduction_cells": "2", "blocks": 2, "channels": 8, "train_images": 32,
         "val_images": 32, "batch_size": 32}
NAIVE = ("naive", "naive_grouped", "exact")  # exactly-shaped networks, compiled per architecture


# ------------------------------------------------------------------------------- the workload
def workload_config(args):
    """configs/cifar10.py's (or configs/default.py's) setting, shortened by the flags."""
    name = "cifar10" if args.workload == "cifar" else "default"
    c = cli.load_config(f"configs/{name}.py", root=cli.REPO_ROOT)
    if args.workload == "default":  # the README's first command: digits, the tiny macro space
        c.search.pipelines = args.pipelines
        c.evaluate.epochs = args.epochs
        return c
    c.search.pipelines = args.pipelines
    c.search.iterations = args.iterations
    c.evaluate.epochs = args.epochs
    c.evaluate.batch_size = args.batch_size
    c.evaluate.eval_batch_size = min(512, args.val_images)
    c.model.cells = args.cells
    c.model.reduction_cells = tuple(int(r) for r in args.reduction_cells.split(",") if r)
    c.model.cell_channels = args.channels
    c.spaces.nas.num_blocks = args.blocks
    c.data.val_size = args.val_images
    return c


def workload_data(args, config):
    """A `data.Dataset` of the first CIFAR-10 training images (random ones if unavailable)."""
    from ma2ml_jax import data
    from ma2ml_jax.bench.augment import load_batch
    from ma2ml_jax.data import Dataset

    if args.workload == "default":
        return data.load(config.data.source, val_size=config.data.val_size, seed=config.seed)

    n_train, n_val = args.train_images, args.val_images
    x, y, source = load_batch(n_train + n_val, args.data)
    xt, yt = x[:n_train], y[:n_train]
    mean = xt.reshape(-1, 3).mean(0).astype(np.float32)
    std = xt.reshape(-1, 3).std(0).astype(np.float32)
    return Dataset(source, xt, yt.astype(np.int32), x[n_train:], y[n_train:].astype(np.int32),
                   x[:0], y[:0].astype(np.int32), 10, mean, std)


# ------------------------------------------------------------------------- the naive baseline
def port_network(kind: str, space, arch, num_classes: int, model_config,
                 grouped_depthwise: bool):
    """The naive port's exactly-shaped network, with the depthwise kernel the masked network of
    `kind` uses on this backend, or XLA's grouped convolution with `grouped_depthwise`.
    """
    from ma2ml_jax import models

    net = models.make_network(kind, arch, num_classes, model_config)
    if hasattr(net, "depthwise_impl"):
        masked, _ = models.make_network_for(kind, space, arch, num_classes, model_config,
                                            masked=True)
        net = net.clone(depthwise_impl="conv" if grouped_depthwise else masked.depthwise_impl)
    return net


def make_naive_evaluator(config, dataset, space, host_augment: bool = True,
                         grouped_depthwise: bool = False):
    """One pipeline at a time; an exactly-shaped network jitted per architecture; PIL on the host
    (`host_augment`); `grouped_depthwise`: XLA's grouped convolution for depthwise layers.

    Same data order, step keys, recipes and metrics as `evaluate.make_evaluator`.
    """
    import jax
    import jax.numpy as jnp

    from ma2ml_jax import cost, proxy
    from ma2ml_jax.bench import pil_augment
    from ma2ml_jax.data import steps_per_epoch
    from ma2ml_jax.evaluate import agent_roles
    from ma2ml_jax.spaces import augment as augment_space
    from ma2ml_jax.spaces import recipe as recipe_space

    roles = agent_roles(space)
    ev = config.evaluate
    kind = space[roles["arch"]].name
    n_train = len(dataset.y_train)
    spe = steps_per_epoch(n_train, ev.batch_size)
    total = max(1, int(round(ev.epochs * spe)))

    def evaluate(pipelines, key):
        out = []
        for i, p in enumerate(pipelines):
            t0 = time.perf_counter()
            net = port_network(kind, space[roles["arch"]], p[roles["arch"]],
                               dataset.num_classes, config.model, grouped_depthwise)
            trainer = proxy.make_trainer(net, image_shape=dataset.image_shape,
                                         num_classes=dataset.num_classes, mean=dataset.mean,
                                         std=dataset.std, total_steps=total,
                                         augment_images=not host_augment)
            init, step = jax.jit(trainer.init), jax.jit(trainer.train_step, donate_argnums=0)
            eval_batch = jax.jit(trainer.eval_batch)
            hp = proxy.Hyperparams.from_recipe(
                recipe_space.to_hparams(space[roles["hpo"]], p[roles["hpo"]]), spe)
            aspace = space[roles["aug"]]
            policy = augment_space.to_policy(aspace, np.asarray(aspace.encode(p[roles["aug"]])))
            subpolicies = p[roles["aug"]]["subpolicies"]
            k_init, k_train = jax.random.split(jax.random.fold_in(key, i + 1))
            state = init(k_init)
            rng = np.random.default_rng(i)
            loss = jnp.zeros(())
            for s in range(total):
                epoch, j = divmod(s, spe)
                if j == 0:
                    perm = np.asarray(jax.random.permutation(
                        jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n_train))
                idx = perm[j * ev.batch_size:(j + 1) * ev.batch_size]
                images = dataset.x_train[idx]
                if host_augment:
                    images = pil_augment.apply_policy(images, subpolicies, rng)
                k = jax.random.fold_in(jax.random.fold_in(k_train, epoch), j + 1)
                # (with host augmentation the step ignores the policy)
                state, loss = step(state, images, dataset.y_train[idx], hp, policy, k)
            correct = 0
            for a in range(0, len(dataset.y_val), ev.eval_batch_size):
                xb = dataset.x_val[a:a + ev.eval_batch_size]
                yb = dataset.y_val[a:a + ev.eval_batch_size]
                correct += int(eval_batch(state, xb, yb, np.ones(len(yb), bool), hp.ema))
            counted = cost.count(kind, p[roles["arch"]], dataset.num_classes, dataset.image_shape,
                                 config.model)
            failure = None if np.isfinite(float(loss)) else "nan_loss"
            out.append({"accuracy": correct / len(dataset.y_val), "loss": float(loss),
                        "flops": counted.flops, "params": counted.params, "failure": failure,
                        "wall_time": time.perf_counter() - t0})
        return out

    return evaluate


# ------------------------------------------------------------------------------ measurements
class CompileCounter:
    """Counts XLA compilations (and their seconds) through jax.monitoring."""

    def __init__(self):
        import jax

        self.count, self.seconds = 0, 0.0

        def listener(event, duration, **kwargs):
            del kwargs
            if event == "/jax/core/compile/backend_compile_duration":
                self.count += 1
                self.seconds += duration

        jax.monitoring.register_event_duration_secs_listener(listener)

    def take(self) -> tuple[int, float]:
        out = (self.count, self.seconds)
        self.count, self.seconds = 0, 0.0
        return out


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of the default device (best of `repeats`)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_memory_bytes() -> tuple[float, str]:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process peak RSS"


def run_variant(variant: str, args) -> dict[str, Any]:
    """Evaluates the workload's iterations with one variant; returns its measurements."""
    os.environ.pop("MA2ML_JAX_CACHE", None)  # every variant compiles from scratch
    import jax

    from ma2ml_jax import evaluate as evaluate_lib

    counter = CompileCounter()
    config = workload_config(args)
    dataset = workload_data(args, config)
    space = make_pipeline_space(config.spaces)
    if variant in NAIVE:
        evaluate = make_naive_evaluator(config, dataset, space, host_augment=variant != "exact",
                                        grouped_depthwise=variant == "naive_grouped")
    else:
        strategy, _, loop = variant.partition("+")
        # "auto" is the project's default: network and strategy chosen by evaluate.py.
        config.evaluate.network = "auto" if strategy == "auto" else "masked"
        config.evaluate.strategy = strategy
        config.evaluate.step_loop = loop or "host"
        evaluate = evaluate_lib.make_evaluator(config, dataset, space, log=print)
    counter.take()
    from ma2ml_jax.data import steps_per_epoch

    batch = config.evaluate.batch_size
    steps = max(1, int(round(config.evaluate.epochs * steps_per_epoch(len(dataset.y_train),
                                                                       batch))))
    iterations = []
    exact = variant in NAIVE
    for it in range(args.exact_iterations if exact else args.iterations):
        actions = space.sample(jax.random.fold_in(jax.random.key(args.seed), it), args.pipelines)
        pipelines = [space.decode(actions, p) for p in range(args.pipelines)]
        t0 = time.perf_counter()
        metrics = evaluate(pipelines, jax.random.key(1000 + it))
        wall = time.perf_counter() - t0
        compiles, compile_s = counter.take()
        images = args.pipelines * steps * batch
        # Useful work: each pipeline's own (unmasked) multiply-adds, x2 FLOPs, x3 fwd + bwd.
        flops = sum(6.0 * m["flops"] * steps * batch
                    + 2.0 * m["flops"] * len(dataset.y_val) for m in metrics)
        iterations.append({"wall_s": wall, "compiles": compiles, "compile_s": compile_s,
                           "pipelines_per_hour": args.pipelines / wall * 3600,
                           "images_per_s": images / wall, "useful_flops_per_s": flops / wall,
                           "accuracy": [m["accuracy"] for m in metrics],
                           "failures": sum(1 for m in metrics if m["failure"])})
        print(f"[{variant}] iteration {it + 1}: {wall:.1f} s, {compiles} compilations "
              f"({compile_s:.1f} s)", flush=True)
    memory, memory_kind = peak_memory_bytes()
    strategy = getattr(evaluate, "strategy", lambda: variant)()
    return {"variant": variant, "strategy": strategy, "iterations": iterations,
            "peak_memory_bytes": memory, "memory_kind": memory_kind, "data": dataset.name,
            "device": str(jax.devices()[0].device_kind), "num_devices": len(jax.devices())}


# ------------------------------------------------------------------------------------- report
def table(results: list[dict[str, Any]], peak: float) -> str:
    """Markdown table of the variants, ratios to the naive baseline."""
    base = next((r for r in results if r["variant"] == "naive" and "iterations" in r), None)

    def pph(r, later):
        # A variant measured for one iteration (naive / exact) costs the same in later ones.
        its = r["iterations"][1:] if later and len(r["iterations"]) > 1 else r["iterations"][:1]
        return sum(i["pipelines_per_hour"] for i in its) / len(its)

    rows = ["| variant | pipelines/h (1st iter.) | pipelines/h (later) | x naive (later) | "
            "images/s (later) | compilations per iter. | useful GFLOP/s (% of matmul peak) | "
            "peak memory |", "|---" * 8 + "|"]
    for r in results:
        if "iterations" not in r:
            rows.append(f"| {r['variant']} | {r.get('error', 'failed')} |" + " |" * 6)
            continue
        its = r["iterations"]
        later = its[1:] or its
        ratio = pph(r, True) / pph(base, True) if base else float("nan")
        flops = sum(i["useful_flops_per_s"] for i in later) / len(later)
        name = r["variant"] + (f" ({r['strategy']})" if r["variant"] == "auto" else "")
        rows.append(
            f"| {name} | {pph(r, False):.0f} | {pph(r, True):.0f} | {ratio:.2f} | "
            f"{sum(i['images_per_s'] for i in later) / len(later):.0f} | "
            f"{' / '.join(str(i['compiles']) for i in its)} | "
            f"{flops / 1e9:.2f} ({100 * flops / peak:.1f}%) | "
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB |")
    return "\n".join(rows)


def parse(argv: Sequence[str] | None, backend: str | None = None):
    """The flags, with `auto` and the backend-sized defaults resolved (`backend`: JAX's default
    backend unless given).
    """
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=None,
                   help=f"comma-separated; default on a CPU {','.join(CPU_VARIANTS)}, elsewhere "
                        f"{','.join(DEFAULT_VARIANTS)}")
    p.add_argument("--workload", default="auto", choices=WORKLOADS,
                   help="cifar: configs/cifar10.py shortened by the flags below (made for an "
                        "accelerator); default: configs/default.py as the README's first command "
                        "runs it (digits, tiny macro space; only --pipelines and --epochs apply); "
                        "auto: default on a CPU, cifar elsewhere")
    p.add_argument("--pipelines", type=int, default=None,
                   help=f"pipelines an iteration (default: {PIPELINES})")
    p.add_argument("--iterations", type=int, default=2, help="iterations of masked variants")
    p.add_argument("--exact_iterations", type=int, default=1,
                   help="iterations of naive / exact (each compiles every new architecture, so "
                        "later iterations cost what the first does)")
    p.add_argument("--train_images", type=int, default=512)
    p.add_argument("--val_images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--reduction_cells", default="2,4")
    p.add_argument("--blocks", type=int, default=5, help="blocks of a cell (the paper's: 5)")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    p.add_argument("--data", default=os.path.join(_REPO_ROOT, "..", "shared", "data",
                                                  "cifar10_jpeg.npz"))
    p.add_argument("--json", default="throughput.json", help="where to write the results")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of the same code path: " + ", ".join(
                       f"--{k}={v}" for k, v in QUICK.items()) + " (the variants as given)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if backend is None:
        import jax

        backend = jax.default_backend()
    cpu = backend == "cpu"
    if args.workload == "auto":
        args.workload = "default" if cpu else "cifar"
    if args.variants is None:
        args.variants = ",".join(CPU_VARIANTS if cpu else DEFAULT_VARIANTS)
    if args.pipelines is None:
        args.pipelines = PIPELINES[args.workload]
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def describe(args, backend: str) -> str:
    """What a run will do, and the flags that change it: printed before any work."""
    if args.workload == "cifar":
        what = (f"the CIFAR-10 cell setting, {args.cells} cells of {args.blocks} blocks and "
                f"{args.channels} channels, "
                f"{args.train_images} training images x {args.epochs} epochs, batch "
                f"{args.batch_size}")
    else:
        what = f"configs/default.py (digits, tiny macro space), {args.epochs} epochs"
    variants = args.variants.split(",")
    lines = [f"workload {args.workload} on {backend}: {args.pipelines} pipelines x "
             f"{args.iterations} iterations ({args.exact_iterations} for naive/exact), {what}; "
             f"{len(variants)} variants, each compiling in its own process: "
             + ", ".join(variants)]
    if backend == "cpu" and args.workload == "cifar" and not args.quick:
        lines.append("the cifar workload is made for an accelerator: on a CPU each variant "
                     "compiles cell networks for many minutes (docs/BENCHMARKS.md, \"The CIFAR "
                     "cell workload\"); --workload=default is the CPU-sized run")
    if not args.quick:
        lines.append("--quick runs the same code path at its smallest size")
    return "\n".join(lines)


def run_child(variant: str, args, forwarded: list[str]) -> dict[str, Any]:
    """Runs one variant in its own process, its progress lines passed through as they come."""
    cmd = [sys.executable, "-m", "ma2ml_jax.bench.throughput", f"--child={variant}", *forwarded]
    result, stderr = None, []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=_REPO_ROOT)
        timer = threading.Timer(args.timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
                else:
                    print(line, end="", flush=True)
            proc.wait()
        finally:
            timed_out = not timer.is_alive() and proc.returncode != 0
            timer.cancel()
        err.seek(0)
        stderr = err.read().strip().splitlines()
    if result is not None:
        return result
    if timed_out:
        return {"variant": variant, "error": f"over {args.timeout:.0f} s"}
    return {"variant": variant, "error": f"failed: {(stderr or ['no output'])[-1][:80]}"}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse(argv)
    if args.child:  # one variant, in its own process
        print("RESULT " + json.dumps(run_variant(args.child, args)), flush=True)
        return
    import jax

    backend = jax.default_backend()
    print(describe(args, backend), flush=True)
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s", flush=True)
    results = []
    # The children resolve nothing on their own: the workload and sizes chosen here.
    forwarded = [a for a in argv if not a.startswith(("--variants", "--json"))] + [
        f"--workload={args.workload}", f"--pipelines={args.pipelines}"]
    variants = args.variants.split(",")
    for i, variant in enumerate(variants):
        print(f"[{i + 1}/{len(variants)}] {variant}: compiling and evaluating ...", flush=True)
        t0 = time.perf_counter()
        results.append(run_child(variant, args, forwarded))
        status = results[-1].get("error", "done")
        print(f"[{i + 1}/{len(variants)}] {variant}: {status} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    print(table(results, peak), flush=True)
    with open(args.json, "w") as f:
        json.dump({"matmul_peak_flops": peak, "args": vars(args), "results": results}, f,
                  indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
