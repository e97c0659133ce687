"""Quiet by default: library notices a user cannot act on are held back while the call that emits them
runs (libraries that write log files still write them there); `environ` for the settings that libraries
read from the environment."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# MLflow's notices of a normal run: the first use of a SQLite store ("Creating initial MLflow database
# tables"), the input example being validated, and, in a uv environment, the lock file copied and
# pip's version unknown (uv environments have no pip).
MLFLOW_NOTICES = (
    "mlflow.store.db.utils",
    "alembic.runtime.migration",
    "mlflow.pyfunc",
    "mlflow.utils.environment",
    "mlflow.utils.uv_utils",
)


class _Below(logging.Filter):
    """Drops the records below `level` of the loggers `names` and their children."""

    def __init__(self, names: tuple[str, ...], level: int) -> None:
        super().__init__()
        self.names, self.level = names, level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in self.names)


def _handlers_above(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches (its own, then its ancestors' while it propagates)."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None  # type: ignore[assignment]
    return handlers


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Hold back the records below `level` of the loggers `names` (and their children) during the block.

    Filters, not levels: MLflow's database migrations reconfigure logging (alembic's `fileConfig`),
    which resets the levels of existing loggers. The filter sits on the loggers themselves (their own
    records, whatever handlers appear meanwhile) and on the handlers their records reach (the children's).
    """
    below = _Below(names, level)
    loggers = [logging.getLogger(name) for name in names]
    handlers = {h for lg in loggers for h in _handlers_above(lg)}
    for item in (*loggers, *handlers):
        item.addFilter(below)
    try:
        yield
    finally:
        for item in (*loggers, *handlers):
            item.removeFilter(below)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (processes started meanwhile inherit them), then restore
    each to its earlier value, or unset it again."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
