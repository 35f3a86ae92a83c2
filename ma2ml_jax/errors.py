"""User-facing errors: bad input that stops a run before any work, with one line of explanation.

`train.py` (and every other command-line entry point) catches `UserError`, prints its message on one
line and exits with code 2; the traceback is shown only with `--traceback` (or MA2ML_TRACEBACK=1).
Everything else (a bug) propagates with its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad user input: an unknown config key or value, dataset source, missing file, bad data."""


class ConfigError(UserError, ValueError):
    """A config key, value or combination that cannot work."""


class DataError(UserError, ValueError):
    """A dataset source that does not exist or whose arrays are inconsistent."""


def choices(values) -> str:
    """Renders valid choices for a message: `a`, `b` or `c`."""
    values = [f"'{v}'" for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
