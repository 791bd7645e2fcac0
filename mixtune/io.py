"""Atomic file and directory writes: readers never see a half-written output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **kwargs: Any) -> None:
    """Write an object as indented JSON atomically."""
    kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path`, on failure it is removed.

    The final folder appears in one rename, so an interrupted write leaves either the previous
    folder or nothing, never a folder that looks complete but is not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder ordinary permissions
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def safetensors_write_errors(path: str | Path) -> Iterator[None]:
    """Re-raise safetensors' I/O failure while writing `path` (a SafetensorError, not an OSError: a full
    disk would otherwise end in a traceback) as the OSError it wraps, naming the file."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        text = str(e)
        if "code: 28" in text or "StorageFull" in text or "No space left" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        if "IoError" in text:
            raise OSError(errno.EIO, f"cannot write ({text.splitlines()[0][:200]})", str(path)) from None
        raise


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove what a killed writer of `path` left beside it: `.NAME.PID.*.staging` / `.partial` folders and
    `.NAME.old-PID` (the previous output, moved aside for the swap). A leftover whose process is still
    alive on this machine is kept; one without a pid (older versions) is removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:old-(\d+)|(?:(\d+)\.)?[^/]*\.(?:staging|partial))$")
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if not m:
            continue
        pid = m.group(1) or m.group(2)
        if pid is not None and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
