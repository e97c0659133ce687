"""Quiet by default: library notices a user cannot act on are held back while the call that emits them
runs (libraries that write log files still write them there)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# MLflow's notices of a normal run: the first use of a SQLite store ("Creating initial MLflow database
# tables"), the input example being validated, and, in a uv environment (no pip), pip's unknown version.
MLFLOW_NOTICES = (
    "mlflow.store.db.utils",
    "alembic.runtime.migration",
    "mlflow.pyfunc",
    "mlflow.utils.environment",
)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Drop the records below `level` of the loggers `names` while the block runs.

    A filter, not a level: MLflow's database migrations reconfigure logging (alembic's `fileConfig`),
    which resets the levels of existing loggers, not their filters.
    """
    below = _Below(level)
    loggers = [logging.getLogger(name) for name in names]
    for lg in loggers:
        lg.addFilter(below)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(below)
