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


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the loggers `names` to `level` for the duration of the block, then restore them."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved, strict=True):
            lg.setLevel(old)
