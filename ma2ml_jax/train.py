r"""Run an MA2ML search: parse flags, load the config, call `search.run(config, workdir)`.

  python -m ma2ml_jax.train                                    # small search on bundled digits
  python -m ma2ml_jax.train --config=configs/cifar10.py:local --workdir=runs/c10
  python -m ma2ml_jax.train --config.search.iterations=10 --config.seed=1
  python -m ma2ml_jax.train --distributed=true ...             # on every host of a TPU pod slice

Any config key can be overridden with --config.KEY=VALUE (see configs/*.py and
ma2ml_jax/config.py for every key). Rerunning with the same --workdir resumes the search.
"""

from __future__ import annotations

import datetime
import os
import re
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from ma2ml_jax import cli as cli_lib

_DEFAULT_CONFIG = cli_lib.DEFAULT_CONFIG
_CONFIG_HELP = ("Experiment config file, optionally with an argument: path/to/config.py[:local]. "
                "Override any of its keys with --config.KEY=VALUE, e.g. "
                "--config.search.iterations=10.")
_CONFIG = None  # the config flag, defined by `cli` (ml_collections reads sys.argv as it defines it)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for the trial log (trials.jsonl) and the saved config. Default: a fresh "
    "timestamped directory under runs/. Rerunning with an existing workdir resumes its search.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False,
    "Show the full traceback for bad input (config, data, files) instead of one line.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar over search iterations.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "true", "false"],
    "Join the other processes of a multi-host run (a TPU pod slice: the same command on every "
    "host) with jax.distributed.initialize(). true: always (hosts found automatically on Cloud "
    "TPU, Slurm and Open MPI, else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
    "JAX_PROCESS_ID); auto: when JAX_COORDINATOR_ADDRESS is set; false: never. Process 0 writes "
    "the workdir and all output.")


def default_workdir() -> str:
    return os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


_fail = cli_lib.fail


def _want_traceback(argv) -> bool:
    return cli_lib.want_traceback(any(
        a in ("--traceback", "--traceback=true", "--traceback=True") for a in argv))


def parse_flags(argv: list[str]) -> list[str]:
    """Absl flag parsing with bad config overrides reported on one line (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:  # absl exits with 1 after printing --help: asking for help is success
        if e.code == 1 and any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv):
            sys.exit(0)
        raise
    except flags.Error as e:
        if _want_traceback(argv):
            raise
        _fail(_flag_message(e))
    except OSError as e:  # the config file is missing or unreadable
        if _want_traceback(argv):
            raise
        _fail(_config_file_message(argv, e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an unknown key or a value of the wrong type.
        if _want_traceback(argv):
            raise
        _fail(_config_key_message(argv, e))
    return []


def _flag_message(e: Exception) -> str:
    text = str(e).splitlines()[0]
    m = re.match(r"flag --(config\.[\w.]+)=(.*?): (.*)", text)
    if m:
        return f"--{m.group(1)}={m.group(2)}: wrong type ({m.group(3)})"
    return text


def _config_key_message(argv: list[str], e: Exception) -> str:
    """Names the first override whose key does not exist, with the valid keys at that level."""
    try:
        config = _load_config_for_message(argv)
    except Exception:  # the config file itself is broken: say that
        return f"cannot load the config: {type(e).__name__}: {e}"
    for arg in argv[1:]:
        m = re.match(r"--config\.([\w.]+)(=|$)", arg)
        if not m:
            continue
        node, parts = config, m.group(1).split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = "config" + "".join(f".{p}" for p in parts[:i])
                return (f"unknown config key --config.{m.group(1)}: {where} has no key {part!r}; "
                        f"valid keys: {', '.join(sorted(keys))}")
            node = node[part]
    return f"bad config override: {str(e).splitlines()[0]}"


def _load_config_for_message(argv):
    spec = _DEFAULT_CONFIG
    for arg in argv[1:]:
        if arg.startswith("--config="):
            spec = arg[len("--config="):]
    return cli_lib.load_config(spec)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value (see --help)")
    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):
        # ml_collections hands back a placeholder that raises on first use when loading failed.
        try:
            config.to_dict()
        except Exception as e:
            if _TRACEBACK.value:
                raise
            _fail(_config_file_message(sys.argv, e))
    workdir = _WORKDIR.value or default_workdir()
    from ma2ml_jax import config as config_lib
    from ma2ml_jax import distributed, search

    config_lib.setup_jax_for_cli()

    with cli_lib.user_errors(_TRACEBACK.value):
        distributed.initialize(_DISTRIBUTED.value)  # before any JAX computation
        result = search.run(config, workdir, progress=_PROGRESS.value)
    if distributed.is_primary():
        print(search.summary(result))


def define_config_flag(argv: list[str]) -> None:
    """Defines --config; an unknown --config.KEY in argv is reported on one line (exit 2)."""
    global _CONFIG
    if _CONFIG is not None:
        return
    try:
        _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, _CONFIG_HELP,
                                                  lock_config=True)
    except OSError as e:
        if _want_traceback(argv):
            raise
        _fail(_config_file_message(argv, e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if _want_traceback(argv):
            raise
        _fail(_config_key_message(argv, e))


def _config_file_message(argv: list[str], e: Exception) -> str:
    spec = next((a[len("--config="):] for a in argv[1:] if a.startswith("--config=")),
                _DEFAULT_CONFIG)
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        known = sorted(f for f in os.listdir(os.path.dirname(_DEFAULT_CONFIG))
                       if f.endswith(".py") and not f.startswith("_"))
        return f"cannot load --config={spec}: no such file {path!r} (configs/: {', '.join(known)})"
    return f"cannot load --config={spec}: {str(e).splitlines()[0]}"


def cli() -> None:
    define_config_flag(sys.argv)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
