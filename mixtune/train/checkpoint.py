"""Checkpoints: the completion marker, the mixture position, and picking one to resume from.

The Trainer writes `output_dir/checkpoint-N/` (model, optimizer, scheduler, RNG, trainer state)
in many files. mixtune adds `mixtune_state.json` (stream position, mixture hash, step) and then,
last of all and only after every process has finished writing, the empty marker `COMPLETE`.
A folder without the marker is a save that was interrupted: `resume: auto` never picks it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE_FILE = "mixtune_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class StreamState:
    """Where the training stream stands at a checkpoint."""

    global_step: int
    position: int          # next stream position to train on (examples consumed, globally)
    mixture_hash: str
    global_batch_size: int
    world_size: int


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
        data = json.loads(file.read_text(encoding="utf-8"))
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


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete checkpoint folders whose save never finished (so a new save cannot mix with them)."""
    removed = []
    for p in list_checkpoints(output_dir):
        if not is_complete(p):
            logger.warning("removing incomplete checkpoint %s (its save was interrupted)", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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


def state_summary(state: StreamState) -> dict[str, Any]:
    """The stream state as plain data (for logs)."""
    return asdict(state)
