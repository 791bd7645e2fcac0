"""Checkpoints: the completion marker, the mixture position, and picking one to resume from.

The Trainer writes `output_dir/checkpoint-N/` (model, optimizer, scheduler, RNG, trainer state)
in many files. mixtune adds `mixtune_state.json` (stream position, mixture hash, step) and then,
last of all and only after every process has finished writing, the empty marker `COMPLETE`.
A folder without the marker is a save that was interrupted: `resume: auto` never picks it.

mixtune rotates checkpoints itself (`training.save_total_limit`), after the newest one is marked
complete: the newest complete checkpoint is never deleted before a newer one is complete. A folder
is deleted by first renaming it out of the `checkpoint-N` namespace (`.checkpoint-N.deleting`), so
a deletion interrupted half-way never leaves a half-deleted `checkpoint-N` to resume from.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError, clip
from mixtune.io import atomic_write_json, atomic_write_text
from mixtune.limits import json_loads

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE_FILE = "mixtune_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_DELETING = ".deleting"


@dataclass(frozen=True)
class StreamState:
    """Where the training stream stands at a checkpoint."""

    global_step: int
    position: int          # next stream position to train on (examples consumed, globally)
    mixture_hash: str
    global_batch_size: int
    world_size: int
    schedule: dict[str, Any] | None = None  # the LR schedule that saved it (`schedule_of`); None before 0.x
    mixing: dict[str, Any] | None = None    # an online mixture's weight history and bandit state (`OnlineMixing`)


def checkpoint_step(path: str | Path) -> int | None:
    """N of a `checkpoint-N` folder, else None."""
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: str | Path) -> bool:
    """True when the checkpoint's save finished (the marker exists)."""
    return (Path(path) / MARKER).is_file()


def mark_complete(path: str | Path, state: StreamState) -> None:
    """Write `mixtune_state.json`, then the marker (call once every process has saved its part)."""
    path = Path(path)
    atomic_write_json(path / STATE_FILE, asdict(state))
    atomic_write_text(path / MARKER, "")


def read_state(path: str | Path) -> StreamState:
    """The stream state of a complete checkpoint."""
    file = Path(path) / STATE_FILE
    try:
        data = json_loads(file.read_text(encoding="utf-8"))
        return StreamState(**data)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot read the checkpoint's stream state: {e}", path=file,
                          hint="resume from another checkpoint or start fresh with resume: never") from None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders in output_dir, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_complete(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    complete = [p for p in list_checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def delete_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint folder: rename it out of the `checkpoint-N` namespace first, then remove it."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}{_DELETING}")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete checkpoint folders whose save never finished (so a new save cannot mix with them), and
    the remains of deletions that were interrupted."""
    removed = []
    for p in list_checkpoints(output_dir):
        if not is_complete(p):
            logger.warning("removing incomplete checkpoint %s (its save was interrupted)", p)
            delete_checkpoint(p)
            removed.append(p)
    folder = Path(output_dir)
    if folder.is_dir():
        for p in folder.glob(f".checkpoint-*{_DELETING}"):
            shutil.rmtree(p, ignore_errors=True)
    return removed


def rotate(output_dir: str | Path, keep: int | None, *, protect: str | Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `keep` complete ones remain (None: keep all),
    besides `protect` (the best held-out checkpoint), which always stays.

    Call it only after the newest checkpoint is marked complete; incomplete folders are left alone
    (a save may be in progress), and the newest complete checkpoint always stays.
    """
    if not keep or keep <= 0:
        return []
    kept = Path(protect).name if protect else None
    complete = [p for p in list_checkpoints(output_dir) if is_complete(p) and p.name != kept]
    doomed = complete[:-keep]
    for p in doomed:
        delete_checkpoint(p)
    return doomed


def resolve_resume(resume: str, output_dir: str | Path, *, recipe_path: str | None = None) -> Path | None:
    """The checkpoint to resume from for `resume:` (auto | never | a path), or None to start fresh."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"checkpoint {resume!r} not found", path=recipe_path, field="resume",
                          hint="auto, never, or a checkpoint-N folder")
    if not is_complete(path):
        raise ConfigError(f"checkpoint {resume!r} is incomplete (no {MARKER} marker: its save was interrupted)",
                          path=recipe_path, field="resume", hint="pick an earlier checkpoint or use resume: auto")
    return path


@contextlib.contextmanager
def readable(checkpoint: str | Path, files: str | Callable[[], str]) -> Iterator[None]:
    """Turn a failure to load `files` of a checkpoint (corrupt, truncated, or a pickle that weights-only
    loading refuses) into one ConfigError naming the files and the way out.

    torch's own message for a refused pickle suggests `weights_only=False`, which would run whatever
    code the file holds; mixtune never passes that advice on.
    """
    from safetensors import SafetensorError

    try:
        yield
    except pickle.UnpicklingError:
        reason = "weights-only loading refused it: it is not a plain tensor file and may hold code"
    except (RuntimeError, EOFError, SafetensorError, ValueError, KeyError, zipfile.BadZipFile) as e:
        reason = f"it is corrupt or incomplete ({type(e).__name__}: {clip(str(e).splitlines()[0] if str(e) else '')})"
    else:
        return
    name = files() if callable(files) else files
    raise ConfigError(
        f"cannot load {Path(checkpoint) / name}: {reason}", field="resume",
        hint=f"resume from an earlier checkpoint (resume={Path(checkpoint).parent}/checkpoint-N) or start "
             "fresh with resume=never") from None
