"""Open a task collection by type and path; the bundled SuperNI sample is the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtune.config import suggest
from mixtune.errors import DataError

COLLECTION_TYPES = ("superni", "hf", "jsonl")


def bundled_path() -> Path:
    """The SuperNI sample shipped inside the mixtune package (works after a non-editable install)."""
    return Path(__file__).resolve().parent.parent / "data" / "superni"


def resolve_collection_path(path: str | Path) -> Path:
    """`"bundled"` -> the bundled sample; anything else -> the path itself (user folder expanded)."""
    if str(path) == "bundled":
        return bundled_path()
    return Path(path).expanduser()


def open_collection(type: str = "superni", path: str | Path = "bundled", *, name: str | None = None,
                    columns: dict[str, Any] | None = None, cache_dir: str | Path | None = None, **kwargs: Any):
    """Open a collection: `superni` (folder or 'bundled'), `hf` (hub name or local dataset) or `jsonl`.

    `columns` maps the HF column names (task, definition, input, output, category, id); extra
    keyword arguments go to the collection class (e.g. `split=` for hf, `workers=` for superni).
    """
    if type == "superni":
        from mixtune.tasks.superni import SuperNICollection

        if columns:
            raise DataError("'columns' applies to hf collections only", field="columns")
        if name is None and str(path) == "bundled":
            name = "superni"
        return SuperNICollection(resolve_collection_path(path), cache_dir, name=name, **kwargs)
    if type == "hf":
        from mixtune.tasks.hf import HFCollection

        return HFCollection(path, cache_dir, name=name, columns=columns, **kwargs)
    if type == "jsonl":
        from mixtune.tasks.jsonl import JsonlCollection

        if columns:
            raise DataError("'columns' applies to hf collections only", field="columns")
        return JsonlCollection(path, cache_dir, name=name, **kwargs)
    raise DataError(f"unknown collection type {type!r}", field="type",
                    hint=suggest(type, COLLECTION_TYPES) or f"use one of {', '.join(COLLECTION_TYPES)}")
