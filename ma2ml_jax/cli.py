"""What the command lines share (train, retrain, report, prepare, the benchmarks).

    config = cli.load_config("configs/cifar10.py:local")   # a config file by path[:argument]
    with cli.user_errors(args.traceback):                   # bad input: one line, exit code 2
        ...

A `UserError` (bad config, data, files; `errors.py`) is printed as ``error: <message>`` on stderr
and the process exits with `errors.EXIT_USER_ERROR`; with ``--traceback`` (or
MA2ML_TRACEBACK=1) it propagates with its traceback instead. Anything else is a bug and always
shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from typing import NoReturn

from ma2ml_jax.errors import EXIT_USER_ERROR, UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")


def load_config(spec: str, root: str | None = None):
    """The ConfigDict of ``path/to/config.py[:argument]`` (`get_config(argument)`); a relative
    path is taken from `root` when given, else from the working directory.
    """
    path, _, arg = spec.partition(":")
    if root is not None and not os.path.isabs(path):
        path = os.path.join(root, path)
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or not os.path.isfile(path):
        raise UserError(f"no config file {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def want_traceback(flag: bool = False) -> bool:
    """True when --traceback was given or MA2ML_TRACEBACK=1."""
    return flag or os.environ.get("MA2ML_TRACEBACK") == "1"


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with the user-error code."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors(traceback: bool = False):
    """Turns a `UserError` raised in the block into one line and exit code 2."""
    try:
        yield
    except UserError as e:
        if want_traceback(traceback):
            raise
        fail(str(e))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad argument reported as the other errors are: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")
