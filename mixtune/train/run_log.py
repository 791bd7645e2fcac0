"""`output_dir/train.log`: one writer, one format, open for the duration of a run.

One `logging.FileHandler` writes every line, as `2026-01-31 12:00:00 LEVEL message`: the run's own notes
(header, resume decisions, each logged metric record, where the final model went) through `note()`, and
mixtune's and transformers' log records (warnings such as a skipped step). Secrets are masked
(`RedactingFilter`). The handler is attached by `run_log()` on the main process and removed when it exits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

#: the run's own notes: written to train.log only (not propagated to the console)
NOTES = "mixtune.train.notes"
FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def note(text: str) -> None:
    """Write a line to the open run log (nothing when none is open, e.g. on a process other than the main)."""
    logging.getLogger(NOTES).info("%s", text)


def _transformers_logger() -> logging.Logger:
    import transformers

    return transformers.utils.logging.get_logger("transformers")


@contextlib.contextmanager
def run_log(path: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """While open: `note()`s, mixtune's and transformers' log records (INFO and up) are appended to `path`;
    transformers' own console handler gets the redacting filter too. Without `enabled`, nothing is written."""
    if not enabled:
        yield
        return
    from mixtune.secrets import RedactingFilter, install_log_redaction

    install_log_redaction(_transformers_logger())
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())
    notes = logging.getLogger(NOTES)
    notes.setLevel(logging.INFO)
    notes.propagate = False
    loggers = [notes, logging.getLogger("mixtune"), _transformers_logger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
