"""Instance embeddings cached beside the task cache, keyed by the encoder and each instance's content.

Layout (under the collection's cache root, `<MIXTUNE_CACHE>/tasks/v1`)::

    embeddings/<encoder key>/<group>.arrow     columns: key (content hash of the text), embedding

`<group>` names a task of a collection (a hash of the collection's type and path and the task name;
for a target file, of the file's path), so a file holds the vectors of one task's instances. A
vector is looked up by the hash of its text: a text is embedded once per encoder, whatever sample of
the task asks for it, and an edited task re-embeds only its changed inputs. Files are written
atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixtune.io import atomic_write_bytes
from mixtune.tasks.cache import content_hash


@dataclass
class EmbeddingRequest:
    """The texts of one group (a task's sampled inputs) whose vectors are wanted, in order."""

    group: str
    texts: Sequence[str]


def task_group(collection: object, task: str) -> str:
    """The cache group of a task of a collection: its type, path and name."""
    return content_hash(type(collection).__name__, str(getattr(collection, "path", "")), task)


def embeddings_dir(cache_root: Path, encoder_key: str) -> Path:
    """The folder of one encoder's cached vectors, beside the task cache's instances/ and collections/."""
    return Path(cache_root) / "embeddings" / encoder_key


def _read(path: Path) -> tuple[list[str], np.ndarray] | None:
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        keys = table.column("key").to_pylist()
        column = table.column("embedding").combine_chunks()
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(keys), column.type.list_size)
        return keys, vectors
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None  # missing or unreadable: recompute


def _write(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    dim = vectors.shape[1]
    table = pa.table({"key": pa.array(keys, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(
                          pa.array(vectors.astype(np.float32).reshape(-1), pa.float32()), dim)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write_bytes(path, memoryview(sink.getvalue()))  # type: ignore[arg-type]


def cached_embeddings(folder: Path, requests: Sequence[EmbeddingRequest],
                      encode: Callable[[list[str]], np.ndarray]) -> tuple[list[np.ndarray], int]:
    """The vectors of every request's texts (one array per request, in order) and how many were embedded.

    `encode(texts) -> (n, d) array` is called at most once, on every missing text of every request,
    so a cold run batches across tasks and shows one progress bar.
    """
    hashes = [[content_hash(t) for t in r.texts] for r in requests]
    stored: dict[str, dict[str, np.ndarray]] = {}  # group -> text hash -> vector (requests may share a group)
    missing: dict[str, str] = {}
    for r, hs in zip(requests, hashes, strict=True):
        if r.group not in stored:
            found = _read(folder / f"{r.group}.arrow")
            stored[r.group] = dict(zip(found[0], found[1], strict=True)) if found is not None else {}
        have = stored[r.group]
        for h, text in zip(hs, r.texts, strict=True):
            if h not in have:
                missing.setdefault(h, text)
    if missing:
        keys = list(missing)
        new = dict(zip(keys, encode([missing[k] for k in keys]), strict=True))
        changed: dict[str, None] = {}
        for r, hs in zip(requests, hashes, strict=True):
            have = stored[r.group]
            for h in hs:
                if h not in have:
                    have[h] = new[h]
                    changed[r.group] = None
        for group in changed:
            have = stored[group]
            _write(folder / f"{group}.arrow", list(have), np.stack(list(have.values())))
    out = []
    for r, hs in zip(requests, hashes, strict=True):
        have = stored[r.group]
        out.append(np.stack([have[h] for h in hs]) if hs else np.zeros((0, 0), np.float32))
    return out, len(missing)
