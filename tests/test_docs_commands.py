"""Every command the README, docs/*.md, launch/README.md and the configs' docstrings show runs,
at its smallest.

`COMMANDS` maps each documented command (whitespace collapsed, continuations joined) to what
stands for it at its smallest size:
  a key of `RUNS`  run here (slow): the command with its smallest flags (`--quick`, a `:local`
                   config, one seed), its placeholder paths (`DIR`, `runs/a`) made by the set-up
                   here, data CI lacks (TFDS downloads, the suite's public files) replaced by
                   stand-ins of the same format;
  `Elsewhere`      run by another slow test that CI's slow step runs (checked: the file is in
                   that step and holds the arguments);
  `ParseOnly`      cannot run without the network; its flags are checked against its --help.
Commands that differ only in sizes (seeds, budgets, epochs, jobs, the timing flag) share one run;
a run that stands for several commands names the union of their searchers or variants, so every
name the docs show is run (`test_every_documented_searcher_and_variant_runs`).

The fast tests fail when a documented command has no entry, or an entry documents nothing any
more: a command added to the docs needs its smallest form here. CI's slow step runs the rest
(`.ci/run`).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np
import pytest
from _processes import ROOT, env

# ------------------------------------------------------------------------ the documented commands
DOCS = ("README.md", "docs/*.md", "launch/README.md")
CONFIG_DOCSTRINGS = "configs/*.py"
ENTRY = re.compile(r"(?:python -m ma2ml_jax\b|ma2ml-train\b)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")


def _words(text: str) -> str:
    return " ".join(text.split())


def block_commands(text: str) -> list[str]:
    """Commands of shell lines: continuations joined, comments dropped, `a && b` split."""
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        line = re.split(r"\s#\s", line)[0]
        out += [_words(p) for p in re.split(r"&&|;", line) if ENTRY.match(_words(p))]
    return out


def inline_commands(text: str) -> list[str]:
    """Inline `code` spans that are commands (a span may wrap across lines)."""
    return [_words(m) for m in INLINE.findall(text) if ENTRY.match(_words(m))]


def markdown_commands(text: str) -> list[str]:
    commands = []
    for language, body in FENCE.findall(text):
        if language in ("", "bash", "sh", "shell", "console"):
            commands += block_commands(body)
    return commands + inline_commands(FENCE.sub("", text))


def docstring_commands(text: str) -> list[str]:
    return block_commands(INLINE.sub("", text)) + inline_commands(text)


def documented_commands() -> dict[str, list[str]]:
    """{command: [files that show it]}."""
    found: dict[str, list[str]] = {}
    for pattern in DOCS:
        for path in sorted(glob.glob(pattern, root_dir=ROOT)):
            with open(os.path.join(ROOT, path)) as f:
                for c in markdown_commands(f.read()):
                    found.setdefault(c, []).append(path)
    for path in sorted(glob.glob(CONFIG_DOCSTRINGS, root_dir=ROOT)):
        with open(os.path.join(ROOT, path)) as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        for c in docstring_commands(doc):
            found.setdefault(c, []).append(path)
    return found


# --------------------------------------------------------------------------- the smallest forms
class Run(NamedTuple):
    """A smallest form, run in a fresh process from the repository root.

    `argv` follows `python -m`; {out} is a folder shared by the runs of this module, {npz} random
    CIFAR-shaped arrays, {suite} a stand-in suite cache, {archive10} / {archive100} archives in
    CIFAR's binary format. `expect`: text its output holds. `needs`: runs it reads the output of.
    `user`: run as a user runs it (one CPU device, XLA's default optimisation, as
    tests/test_configs_local.py runs the configs, so their compilations are shared); otherwise
    with the tests' faster-compiling XLA flags on one CPU device.
    """

    argv: str
    expect: str
    needs: tuple[str, ...] = ()
    user: bool = False


class Elsewhere(NamedTuple):
    """A smallest form another slow test runs: `test`, a file of CI's slow step, holds `args`."""

    test: str
    args: tuple[str, ...]


class ParseOnly(NamedTuple):
    """A command that cannot run in CI (`why`): its module's --help must name `flags`."""

    module: str
    flags: tuple[str, ...]
    why: str


SEARCH = "ma2ml_jax.train --config=configs/default.py:local --noprogress"
SE = "ma2ml_jax.bench.sample_efficiency --quick --no_timing"
# Every searcher the docs run through sample_efficiency, on the smallest cooperative objective.
SE_ALGORITHMS = ("ma2ml,ma2ml_replay,ma2ml_onpolicy,ma2ml_with_repeats,lite,random,tpe,"
                 "evolution,local,ma2ml_paper,ma2ml_frozen,ma2ml_mutants,ma2ml_mutants_frozen,"
                 "ma2ml_mutants_fast")
RUNS = {
    # The main command and what the README does with its workdirs.
    "search": Run(f"{SEARCH} --workdir={{out}}/ma2ml", "Best pipeline of 8 evaluated",
                  user=True),
    "search_random": Run(f"{SEARCH} --config.search.algorithm=random --workdir={{out}}/random",
                         "Best pipeline of 8 evaluated", user=True),
    "search_overrides": Run(f"{SEARCH} --config.search.iterations=1 --config.seed=1 "
                            "--workdir={out}/mine", "Best pipeline of 4 evaluated", user=True),
    "train_help": Run("ma2ml_jax.train --help", "--config.KEY=VALUE"),
    "report": Run("ma2ml_jax.report {out}/ma2ml {out}/random --out {out}/compare", "summary.md",
                  needs=("search", "search_random")),
    "retrain": Run("ma2ml_jax.retrain --workdir {out}/ma2ml --top_k 1 --seeds 1 --report_seeds 1 "
                   "--epochs 1 --max_train 128 --noprogress", "## Report: the selected pipelines",
                   needs=("search",)),
    "prepare_cifar10": Run("ma2ml_jax.prepare cifar10 --data_dir={out}/tfds "
                           "--archive={archive10}", "cifar10"),
    "prepare_cifar100": Run("ma2ml_jax.prepare cifar100 --data_dir={out}/tfds "
                            "--archive={archive100}", "cifar100"),
    # The paper's Algorithm 1 through the command line, on a paper config's spaces (its
    # :local variant with the default searcher runs in tests/test_configs_local.py).
    "train_paper": Run("ma2ml_jax.train --config=configs/cifar10.py:local "
                       "--config.search.algorithm=ma2ml_paper --config.search.iterations=1 "
                       "--config.search.pipelines=1 --config.data.source=npz:{npz} "
                       "--workdir={out}/paper --noprogress", "Best pipeline of 1 evaluated"),
    "train_vgg16": Run("ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:vgg16:local "
                       "--config.data.source=npz:{npz} --workdir={out}/vgg16 --noprogress",
                       "Best pipeline of 2 evaluated"),
    # Benchmarks, each with its own --quick.
    "throughput": Run("ma2ml_jax.bench.throughput --quick --json={out}/t.json",
                      "| loop | "),
    "throughput_variants": Run(
        "ma2ml_jax.bench.throughput --quick --workload=default "
        "--variants=naive_grouped,exact,map,unrolled,vmap,loop+scan --json={out}/tv.json",
        "| loop+scan | "),
    "throughput_cifar": Run("ma2ml_jax.bench.throughput --quick --workload=cifar "
                            "--variants=naive,auto,loop --json={out}/tc.json", "| auto ("),
    "augment_smallcnn": Run("ma2ml_jax.bench.augment --network smallcnn --quick",
                            "augment / step"),
    "augment_cell": Run("ma2ml_jax.bench.augment --network cell --quick", "augment / step"),
    "depthwise": Run("ma2ml_jax.bench.depthwise --quick", "32x32x96"),
    "cells": Run("ma2ml_jax.bench.cells --quick --networks=scan,exact --json={out}/c.json",
                 "| 2 (2) | scan | "),
    "cells_lower": Run("ma2ml_jax.bench.cells --quick --lower_only --networks=scan,families,"
                       "exact --json={out}/cl.json", "| 2 (2) | families | 2 |"),
    "input": Run("ma2ml_jax.bench.input --quick --data_dir={out}/jpegs", "| 64 ("),
    "input_epochs": Run("ma2ml_jax.bench.input --quick --epochs=8 --data_dir={out}/jpegs",
                        "| 64 ("),
    "suite_list": Run("ma2ml_jax.bench.suite --cache={suite}", "composite_report6"),
    "suite_prepare": Run("ma2ml_jax.bench.suite prepare --cache={out}/suite_source "
                         "--problems=nb_macro", "nb_macro: 6,561 pipelines"),
    "se_searchers": Run(f"{SE} --sizes=small --noise=none --algorithms={SE_ALGORITHMS} "
                        "--out={out}/se_searchers", "| small | ma2ml_mutants_fast |"),
    "se_layerwise": Run(f"{SE} --sizes=layerwise_small --noise=none "
                        "--algorithms=qlearning,ma2ml,random --out={out}/se_layerwise",
                        "| layerwise_small | qlearning |"),
    "se_timing": Run("ma2ml_jax.bench.sample_efficiency --quick --timing --out={out}/se_timing",
                     "one tell"),
    "se_sweep": Run("ma2ml_jax.bench.sample_efficiency --quick --sweep --out={out}/se_sweep",
                    "lite lr="),
    "se_tuning": Run(f"{SE} --suite=tune_a --target=0.005 --algorithms=ma2ml,ma2ml_mutants "
                     "--out={out}/se_tuning", "| tune_a | ma2ml_mutants |"),
    "se_composite": Run(f"{SE} --suite=composite_report6 --cache={{suite}} "
                        "--algorithms=local,ma2ml --out={out}/se_composite",
                        "| composite_report6 | ma2ml |"),
    "se_real": Run(f"{SE} --suite=real --cache={{suite}} --algorithms=random,ma2ml_paper "
                   "--out={out}/se_real", "| nb_macro | ma2ml_paper |"),
    "se_ordered": Run(f"{SE} --suite=real --cache={{suite}} --algorithms=ma2ml_order_critic,"
                      "ma2ml_order_steps,ma2ml_ordered --out={out}/se_ordered",
                      "| nb_macro | ma2ml_ordered |"),
    "se_reporting": Run(f"{SE} --suite=reporting --cache={{suite}} --algorithms=ma2ml,"
                        "ma2ml_order_critic,tpe,evolution,local,ma2ml_paper,random "
                        "--out={out}/se_reporting", "| xgboost_12 | ma2ml_order_critic |"),
    "se_local": Run(f"{SE} --suite=nb_macro,tune_b --cache={{suite}} --algorithms=ma2ml_local2,"
                    "ma2ml_local2_mutants --out={out}/se_local", "| tune_b | ma2ml_local2 |"),
    "se_real_sweep": Run("ma2ml_jax.bench.sample_efficiency --quick --suite=real --sweep "
                         "--cache={suite} --out={out}/se_real_sweep", "chosen:"),
    "se_real_sweep_paper": Run("ma2ml_jax.bench.sample_efficiency --quick --suite=real --sweep "
                               "--sweep_algorithm=ma2ml_paper --cache={suite} "
                               "--out={out}/se_real_sweep_paper", "chosen:"),
}

LOCAL = "tests/test_configs_local.py"
REAL_SEARCH = "tests/test_real_search.py"
FETCH = ParseOnly("ma2ml_jax.bench.suite", ("fetch", "--from_git"),
                  "downloads pinned public files (checked against their git blob ids); CI has no "
                  "network, tests/test_suite.py reads the suite's formats from stand-ins")


def _local(spec: str) -> Elsewhere:
    return Elsewhere(LOCAL, (spec,))


COMMANDS = {
    "python -m ma2ml_jax.train": "search",
    "python -m ma2ml_jax.train --workdir=runs/readme_ma2ml": "search",
    "python -m ma2ml_jax.train --config=configs/default.py:local": "search",
    "python -m ma2ml_jax.train --config.search.iterations=10": "search_overrides",
    "python -m ma2ml_jax.train --config.search.iterations=10 --config.seed=1 "
    "--workdir=runs/mine": "search_overrides",
    "python -m ma2ml_jax.train --help": "train_help",
    "python -m ma2ml_jax.report runs/a runs/b --out runs/compare": "report",
    "python -m ma2ml_jax.report runs/readme_ma2ml runs/readme_random": "report",
    "python -m ma2ml_jax.retrain --workdir DIR --top_k 30 --seeds 3 --report_seeds 5": "retrain",
    "python -m ma2ml_jax.prepare cifar10 --data_dir=DIR": "prepare_cifar10",
    "python -m ma2ml_jax.prepare cifar10": "prepare_cifar10",
    "python -m ma2ml_jax.prepare cifar100": "prepare_cifar100",
    # The paper configs: their :local variants (random images of the data's shape).
    "python -m ma2ml_jax.train --config=configs/cifar10.py:local": _local(
        "configs/cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/cifar10.py:local "
    "--config.data.source=npz:/tmp/cifar10.npz": _local("configs/cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/cifar10.py --workdir=runs/cifar10":
        _local("configs/cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/cifar100.py:local": _local(
        "configs/cifar100.py:local"),
    "python -m ma2ml_jax.train --config=configs/cifar100.py:local "
    "--config.data.source=npz:/tmp/cifar10.npz": _local("configs/cifar100.py:local"),
    "python -m ma2ml_jax.train --config=configs/cifar100.py --workdir=runs/cifar100":
        _local("configs/cifar100.py:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py:local": _local(
        "configs/imagenet200.py:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py:local "
    "--config.data.source=npz:/tmp/cifar10.npz": _local("configs/imagenet200.py:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py --workdir=runs/in200":
        _local("configs/imagenet200.py:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py:flops900:local": _local(
        "configs/imagenet200.py:flops900:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py:flops900:local "
    "--config.data.source=npz:/tmp/cifar10.npz": _local("configs/imagenet200.py:flops900:local"),
    "python -m ma2ml_jax.train --config=configs/imagenet200.py:flops900 --workdir=runs/in200_900m":
        _local("configs/imagenet200.py:flops900:local"),
    "python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:local": _local(
        "configs/iranfar_vgg_cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:local "
    "--config.data.source=npz:/tmp/cifar10.npz": _local("configs/iranfar_vgg_cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py --workdir=runs/iranfar":
        _local("configs/iranfar_vgg_cifar10.py:local"),
    "python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:vgg16": "train_vgg16",
    "python -m ma2ml_jax.train --config=configs/iranfar_vgg_cifar10.py:vgg16:local":
        "train_vgg16",
    "python -m ma2ml_jax.train --config=configs/full_space_digits.py:local": _local(
        "configs/full_space_digits.py:local"),
    "python -m ma2ml_jax.train --config=configs/full_space_digits.py --workdir=runs/full":
        _local("configs/full_space_digits.py:local"),
    # The paper's Algorithm 1 on the paper configs: one run on cifar10.py:local's spaces.
    "python -m ma2ml_jax.train --config=configs/cifar10.py --workdir=runs/cifar10_paper "
    "--config.search.algorithm=ma2ml_paper": "train_paper",
    "python -m ma2ml_jax.train --config=configs/cifar100.py --workdir=runs/cifar100_paper "
    "--config.search.algorithm=ma2ml_paper": "train_paper",
    "python -m ma2ml_jax.train --config=configs/imagenet200.py --workdir=runs/in200_paper "
    "--config.search.algorithm=ma2ml_paper": "train_paper",
    "python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py "
    "--searchers=ma2ml,ma2ml_frozen --seeds=2": Elsewhere(REAL_SEARCH, (
        "--config=configs/full_space_digits.py:local", "--searchers=random", "--seeds=1")),
    "python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py "
    "--searchers=ma2ml,ma2ml_frozen --seeds=2 --out=runs/real_search": Elsewhere(REAL_SEARCH, (
        "--config=configs/full_space_digits.py:local", "--searchers=random", "--seeds=1")),
    "python -m ma2ml_jax.bench.real_search": Elsewhere(REAL_SEARCH, (
        "--config=configs/full_space_digits.py:local", "--searchers=random", "--seeds=1")),
    "python -m ma2ml_jax.bench.real_search --config=configs/full_space_digits.py "
    "--searchers=ma2ml,ma2ml_frozen --seeds=1": Elsewhere(REAL_SEARCH, (
        "--config=configs/full_space_digits.py:local", "--searchers=random", "--seeds=1")),
    # Benchmarks.
    "python -m ma2ml_jax.bench.throughput": "throughput",
    "python -m ma2ml_jax.bench.throughput --workload=default --pipelines=8 --iterations=2 "
    "--exact_iterations=2 --variants=naive,naive_grouped,exact,loop": "throughput_variants",
    "python -m ma2ml_jax.bench.throughput --workload=default --pipelines=8 --iterations=2 "
    "--exact_iterations=2 --variants=naive,exact,loop,map,unrolled,vmap,loop+scan":
        "throughput_variants",
    "python -m ma2ml_jax.bench.throughput --workload=cifar --variants=naive,auto,loop "
    "--pipelines=6 --cells=2 --reduction_cells=2 --channels=8 --train_images=128 "
    "--val_images=256": "throughput_cifar",
    "python -m ma2ml_jax.bench.augment --network smallcnn --repeats 10": "augment_smallcnn",
    "python -m ma2ml_jax.bench.augment --network cell --repeats 5": "augment_cell",
    "python -m ma2ml_jax.bench.depthwise --repeats 10": "depthwise",
    "python -m ma2ml_jax.bench.cells --cells=2,5,17 --networks=scan,exact --timeout=1200": "cells",
    "python -m ma2ml_jax.bench.cells --lower_only --cells=2,5,17,29 "
    "--networks=scan,families,exact": "cells_lower",
    "python -m ma2ml_jax.bench.input --images=500,4000 --size_range=64,512 --image_size=224 "
    "--batch_size=64": "input",
    "python -m ma2ml_jax.bench.input --images=500 --epochs=8 --size_range=64,512 "
    "--image_size=224 --batch_size=64": "input_epochs",
    "python -m ma2ml_jax.bench.suite": "suite_list",
    "python -m ma2ml_jax.bench.suite list": "suite_list",
    "python -m ma2ml_jax.bench.suite prepare": "suite_prepare",
    "python -m ma2ml_jax.bench.suite fetch": FETCH,
    "python -m ma2ml_jax.bench.sample_efficiency": "se_searchers",
    "python -m ma2ml_jax.bench.sample_efficiency --sizes=medium,large --noise=none --seeds=5 "
    "--jobs=2 --no_timing --algorithms=ma2ml,ma2ml_paper,local,random": "se_searchers",
    "python -m ma2ml_jax.bench.sample_efficiency --sizes=large --noise=none --seeds=5 --no_timing "
    "--algorithms=ma2ml_mutants,ma2ml_mutants_frozen,ma2ml,ma2ml_frozen,local,evolution":
        "se_searchers",
    "python -m ma2ml_jax.bench.sample_efficiency --sizes=layerwise_small,layerwise "
    "--algorithms=qlearning,ma2ml,random": "se_layerwise",
    "python -m ma2ml_jax.bench.sample_efficiency --timing": "se_timing",
    "python -m ma2ml_jax.bench.sample_efficiency --sweep": "se_sweep",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=tune_c --target=0.005 "
    "--budget_scale=0.5 --first_seed=100 --seeds=6 --no_timing "
    "--algorithms=ma2ml_mutants,ma2ml_mutants_frozen": "se_tuning",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=tune_c --target=0.005 "
    "--budget_scale=0.5 --first_seed=100 --seeds=2 --no_timing --algorithms=ma2ml,ma2ml_frozen":
        "se_tuning",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=tune_c --target=0.005 "
    "--budget_scale=0.5 --first_seed=100 --seeds=3 --no_timing --algorithms=ma2ml_mutants_fast":
        "se_tuning",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=composite_report6 --seeds=5 "
    "--no_timing --algorithms=ma2ml_mutants,ma2ml_mutants_frozen,ma2ml,ma2ml_frozen,local,"
    "evolution,tpe": "se_composite",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=real --seeds=10 --jobs=2 --no_timing "
    "--algorithms=random,tpe,evolution,local,ma2ml,ma2ml_paper": "se_real",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=real --first_seed=100 --seeds=3 "
    "--no_timing --jobs=1 --algorithms=ma2ml,ma2ml_order_critic,ma2ml_order_steps,ma2ml_ordered":
        "se_ordered",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=reporting --seeds=5 --no_timing "
    "--jobs=1 --algorithms=ma2ml,ma2ml_order_critic,tpe,local": "se_reporting",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=reporting --seeds=5 --no_timing "
    "--algorithms=ma2ml,tpe,evolution,local,ma2ml_paper,random": "se_reporting",
    "python -m ma2ml_jax.bench.sample_efficiency --first_seed=100 --seeds=3 --no_timing "
    "--suite=nb_macro,channel_mobilenet,channel_resnet,xgboost_1501,xgboost_40499,rpart_14,"
    "rpart_40499,tune_b --algorithms=ma2ml,ma2ml_local2,ma2ml_local2_mutants": "se_local",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=tune_c --first_seed=100 --seeds=3 "
    "--no_timing --algorithms=ma2ml_local2": "se_local",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=real --sweep --jobs=2": "se_real_sweep",
    "python -m ma2ml_jax.bench.sample_efficiency --suite=real --sweep "
    "--sweep_algorithm=ma2ml_paper": "se_real_sweep_paper",
}


# --------------------------------------------------------------------------------- fast checks
def module_docstring_commands() -> set[str]:
    """Commands the modules' docstrings show (their --help): an entry may stand for one."""
    found = set()
    for path in glob.glob("ma2ml_jax/**/*.py", root_dir=ROOT, recursive=True):
        with open(os.path.join(ROOT, path)) as f:
            found.update(docstring_commands(ast.get_docstring(ast.parse(f.read())) or ""))
    return found


def test_every_documented_command_has_a_smallest_form():
    documented = documented_commands()
    missing = {c: where for c, where in documented.items() if c not in COMMANDS}
    assert not missing, ("documented commands without a smallest form in COMMANDS "
                         f"(tests/test_docs_commands.py): {json.dumps(missing, indent=1)}")
    stale = sorted(set(COMMANDS) - set(documented) - module_docstring_commands())
    assert not stale, f"COMMANDS entries that no doc or --help shows any more: {stale}"


def test_every_smallest_form_exists_and_runs_the_documented_module():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        slow_step = f.read().split("-m slow", 1)[1]
    for command, form in COMMANDS.items():
        module = command.split()[2]
        if isinstance(form, str):
            assert form in RUNS, (command, form)
            assert RUNS[form].argv.split()[0] == module, (command, form)
        elif isinstance(form, Elsewhere):
            assert form.test in slow_step, f"{form.test} is not in CI's slow step"
            with open(os.path.join(ROOT, form.test)) as f:
                source = f.read()
            for arg in (*form.args, module):
                assert arg in source, f"{form.test} does not run {arg} (for {command!r})"
        else:
            assert isinstance(form, ParseOnly) and form.why and module == form.module, command
    used = {f for f in COMMANDS.values() if isinstance(f, str)}
    assert set(RUNS) == used | {n for r in RUNS.values() for n in r.needs}, "unused RUNS"


def _names(argv: str, flag: str) -> set[str]:
    m = re.search(rf"--{flag}[= ](\S+)", argv)
    return set(m.group(1).split(",")) if m else set()


@pytest.mark.parametrize("module, flag", [("ma2ml_jax.bench.sample_efficiency", "algorithms"),
                                          ("ma2ml_jax.bench.throughput", "variants"),
                                          ("ma2ml_jax.bench.cells", "networks")])
def test_every_documented_searcher_and_variant_runs(module, flag):
    """The runs standing for several commands hold every name those commands hold."""
    run = set().union(*(_names(r.argv, flag) for r in RUNS.values()
                        if r.argv.startswith(module + " ")))
    if module.endswith("throughput"):
        from ma2ml_jax.bench import throughput

        run |= set(throughput.CPU_VARIANTS)  # what the bare --quick run runs on CPU
    documented = set().union(*(_names(c, flag) for c in COMMANDS
                               if c.startswith(f"python -m {module} ")))
    assert documented and documented <= run, sorted(documented - run)


@pytest.mark.parametrize("command", [c for c, f in COMMANDS.items() if isinstance(f, ParseOnly)])
def test_commands_that_cannot_run_here_parse(command):
    form = COMMANDS[command]
    r = subprocess.run([sys.executable, "-m", form.module, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env(1))
    assert r.returncode == 0, r.stderr
    for flag in form.flags:
        assert flag in r.stdout, (flag, r.stdout)


def test_the_collector_reads_blocks_inline_spans_and_docstrings():
    text = ("Run `python -m\n  ma2ml_jax.report runs/a` then `--flag` and `python other.py`.\n"
            "```bash\npip install x && python -m ma2ml_jax.train   # the main command\n"
            "python -m ma2ml_jax.bench.cells --cells=2 \\\n    --networks=exact  # two lines\n"
            "# python -m ma2ml_jax.commented_out\ntensorboard --logdir runs\n```\n"
            "```python\npython -m ma2ml_jax.not_shell\n```\n")
    assert markdown_commands(text) == [
        "python -m ma2ml_jax.train", "python -m ma2ml_jax.bench.cells --cells=2 --networks=exact",
        "python -m ma2ml_jax.report runs/a"]
    doc = ("Prepared by `python -m ma2ml_jax.prepare cifar10`.\n\n"
           "  python -m ma2ml_jax.train --config=c.py \\\n      --workdir=w   # a run\n")
    assert docstring_commands(doc) == ["python -m ma2ml_jax.train --config=c.py --workdir=w",
                                       "python -m ma2ml_jax.prepare cifar10"]


# ---------------------------------------------------------------------------- the slow runs
def _stand_in_suite(cache: str) -> None:
    """Every suite problem as a table of the `small` cooperative objective's shape (3 agents of 3
    decisions of 4 values), made-up values: the suite's file format without its sources.
    """
    from ma2ml_jax.bench import sample_efficiency, suite

    shape = sample_efficiency.SIZES["small"]
    decisions = {agent: {f"d{i}": tuple(range(n)) for i, n in enumerate(sizes)}
                 for agent, sizes in shape.items()}
    space = suite.choices_pipeline_space(decisions)
    size = int(np.prod([n for sizes in shape.values() for n in sizes]))
    for i, name in enumerate(suite.PROBLEMS):
        values = np.random.default_rng(i).uniform(0.5, 1.0, size)
        suite.save_table(suite.table_path(cache, name), space, values, "stand-in")


def _nb_macro_source(cache: str) -> None:
    """NAS-Bench-Macro's JSON file as `suite fetch` leaves it, made-up accuracies."""
    import itertools

    from ma2ml_jax.bench import suite

    data = {"".join(d): {"mean_acc": 90 + 0.1 * sum(map(int, d)), "test_acc": [90.0] * 3}
            for d in itertools.product("012", repeat=8)}
    path = os.path.join(cache, suite.SOURCES["nb_macro"].local)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The placeholders' values: folders, stand-in data and caches."""
    from test_prepare import _cifar_archive

    root = tmp_path_factory.mktemp("docs_commands")
    rng = np.random.default_rng(0)
    npz = root / "random10.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (1000, 32, 32, 3), np.uint8),
             y_train=np.arange(1000) % 10,
             x_test=rng.integers(0, 256, (100, 32, 32, 3), np.uint8), y_test=np.arange(100) % 10)
    archives = {}
    for name in ("cifar10", "cifar100"):
        archives[name] = root / f"{name}.tar.gz"
        _cifar_archive(archives[name], name, per_file=4)
    _stand_in_suite(str(root / "suite"))
    _nb_macro_source(str(root / "out" / "suite_source"))
    return {"out": str(root / "out"), "npz": str(npz), "suite": str(root / "suite"),
            "archive10": str(archives["cifar10"]), "archive100": str(archives["cifar100"])}


@pytest.fixture(scope="module")
def runner(places):
    """Runs a RUNS entry once (its `needs` first); returns (process, seconds)."""
    done: dict[str, tuple[subprocess.CompletedProcess, float]] = {}

    def run(name: str):
        if name not in done:
            spec = RUNS[name]
            for need in spec.needs:
                assert run(need)[0].returncode == 0, f"{name} needs {need}, which failed"
            argv = shlex.split(spec.argv.format(**places))
            if spec.user:  # with the session's compilation cache (tests/conftest.py)
                environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
            else:
                environ = env(1)
            t0 = time.perf_counter()
            done[name] = (subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=environ,
                                         capture_output=True, text=True, timeout=1200),
                          time.perf_counter() - t0)
        return done[name]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_smallest_form_runs(name, runner, places):
    r, seconds = runner(name)
    assert r.returncode == 0, r.stderr[-3000:]
    assert RUNS[name].expect in r.stdout + r.stderr, r.stdout[-3000:]
    print(f"{name}: {seconds:.0f} s")
    out = places["out"]
    if name == "report":
        assert os.path.getsize(os.path.join(out, "compare", "summary.md")) > 0
    if name == "retrain":
        assert os.path.exists(os.path.join(out, "ma2ml", "retrain", "results.md"))
    if name.startswith("se_"):
        record = json.load(open(os.path.join(out, name, "sample_efficiency.json")))
        assert record.get("results") or record.get("sweep") or record.get("timing")
