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
    # the writer's pid in the name lets `remove_stale_siblings` tell a killed write from a running one
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".partial", dir=path.parent))
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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(path: str | Path) -> list[Path]:
    """Clear what killed `atomic_directory` writes of `path` left beside it; return what was removed.

    Removed: `.NAME.PID-*.partial` folders and `.NAME.old-PID` previous outputs whose process is gone,
    and `.NAME.*.partial` / `.NAME.*.staging` folders of earlier mixtune versions (their names carry no
    pid). If `path` itself is missing because a write was killed between its two renames, the newest
    previous output is first put back at `path`. Folders of a write still running are left alone.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    current = re.compile(rf"\.{name}\.(\d+)-[a-z0-9_]+\.partial")
    legacy = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.(partial|staging)")
    previous = re.compile(rf"\.{name}\.old-(\d+)")
    stale, olds = [], []
    for entry in path.parent.iterdir():
        if m := current.fullmatch(entry.name):
            if not _process_alive(int(m.group(1))):
                stale.append(entry)
        elif legacy.fullmatch(entry.name):
            stale.append(entry)
        elif (m := previous.fullmatch(entry.name)) and not _process_alive(int(m.group(1))):
            olds.append(entry)
    if olds and not path.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, path)
        olds.remove(newest)
    for entry in stale + olds:
        shutil.rmtree(entry, ignore_errors=True)
    return stale + olds
