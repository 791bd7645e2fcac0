"""What mixtune shows on the console: status lines for long phases, and tables that never cut a name.

A phase that can take more than a moment (indexing, planning, loading a model, an evaluation, saving)
says so when it starts and how long it took, so a run is never silent for long; tables print at their
natural width, wider than the terminal if they must, because a task name cut to `task114…` is no
longer an identifier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("mixtune")

#: phases shorter than this (seconds) get no closing "done" line
QUIET_BELOW_S = 2.0


@contextmanager
def phase(what: str, *, enabled: bool = True, logger: logging.Logger | None = None) -> Iterator[None]:
    """Log `what…` when the phase starts and `what: done in N s` when it ends (if it took a while).

    `enabled=False` (e.g. `logging.progress_bar: false`, or a process other than the main one) says nothing.
    """
    if not enabled:
        yield
        return
    out = logger or log
    out.info("%s ...", what)
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    if seconds >= QUIET_BELOW_S:
        out.info("%s: done in %.1f s", what, seconds)


def print_table(table: Any, console: Any = None) -> None:
    """Print a rich Table at its natural width: no column is cut or wrapped to fit a narrow terminal.

    `console` (a rich Console) is used as it is when the table fits, else a console as wide as the table
    writing to the same file.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if needed > console.width:
        console = Console(file=console.file, width=needed, no_color=console.no_color)
    console.print(table)
