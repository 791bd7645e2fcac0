"""A training run's `output_dir`: checked before use and held by one run at a time.

Two runs on one folder would interleave `train.log`, overwrite each other's checkpoints and end with
one run's `final/` holding the other's weights. The main process of a run takes an exclusive lock
on `output_dir/.mixtune.lock` (`fcntl.flock`) for the whole run. The operating system releases it
when the process exits, however it exits, so a lock left by a killed run is stale and taken over
at once; the file records the holder (pid, host, start time) for the error a second run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mixtune.errors import ConfigError

LOCK_FILE = ".mixtune.lock"


def check_output_dir(output_dir: str, *, recipe_path: str | None = None) -> Path:
    """`output_dir` as a Path; refuses an empty value and a path that exists but is not a folder."""
    if not str(output_dir).strip():
        raise ConfigError("output_dir is empty", path=recipe_path, field="output_dir",
                          hint="name a folder for checkpoints, logs and the final model, e.g. output_dir=runs/x")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a folder", path=recipe_path, field="output_dir",
                          hint="name a folder (new or an earlier run's)")
    return path


@contextlib.contextmanager
def hold(output_dir: Path, *, recipe_path: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of `output_dir` while the block runs; a held lock is a ConfigError
    naming the holder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise ConfigError(f"{output_dir} is in use by another training run ({holder})", path=recipe_path,
                              field="output_dir",
                              hint="wait for that run to finish, stop it, or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on host {socket.gethostname()}, since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
