"""Instance embeddings cached beside the task cache, keyed by the encoder and each instance's content.

Layout (under the collection's cache root, `<MIXTUNE_CACHE>/tasks/v1`)::

    embeddings/<encoder key>/<group>.arrow     columns: key (hash of the text), row, embedding

`<group>` names a task of a collection (a hash of the collection's type and path and the task name;
for a target file, of the file's path), so a file holds the vectors of one task's instances. A
vector is keyed by the hash of its text: a text is embedded once per encoder, whatever sample of the
task asks for it, and an edited task re-embeds only its changed inputs. The file also records the
task's content key (schema metadata) and each vector's row in the task: while the content key is
unchanged, a warm run finds its sample's vectors by row without reading or hashing any text. Files
are written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixtune.io import atomic_write_bytes
from mixtune.tasks.cache import content_hash

_VERSION = b"mixtune.content_key"


@dataclass
class EmbeddingRequest:
    """The vectors wanted for some rows of one group: `texts()` gives their inputs (read only on a miss)."""

    group: str
    version: str  # the content key the rows refer to (a task's content key, a hash of a file's inputs)
    rows: np.ndarray
    texts: Callable[[], Sequence[str]]


@dataclass
class _Group:
    version: str = ""
    keys: list[str] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vectors: np.ndarray | None = None
    _by_key: dict[str, int] | None = None

    def by_key(self) -> dict[str, int]:
        if self._by_key is None:
            self._by_key = {k: i for i, k in enumerate(self.keys)}
        return self._by_key

    def find_rows(self, version: str, rows: np.ndarray) -> np.ndarray | None:
        """Positions of `rows` in this group, or None unless every row is there for `version`."""
        if version != self.version or self.vectors is None or len(self.rows) == 0:
            return None
        order = np.argsort(self.rows, kind="stable")
        ordered = self.rows[order]
        pos = np.minimum(np.searchsorted(ordered, rows), len(ordered) - 1)
        return order[pos] if np.array_equal(ordered[pos], rows) else None

    def add(self, version: str, keys: list[str], rows: np.ndarray, vectors: np.ndarray) -> None:
        self.rows = np.array(self.rows, np.int64)  # a writable copy (a read file's rows are memory-mapped)
        if version != self.version:  # the task changed: its rows are stale, its texts' vectors are not
            self.rows = np.full(len(self.rows), -1, np.int64)
            self.version = version
        index = self.by_key()
        for key, row, vector in zip(keys, rows.tolist(), vectors, strict=True):
            if key in index:
                self.rows[index[key]] = row
                continue
            index[key] = len(self.keys)
            self.keys.append(key)
            self.rows = np.append(self.rows, row)
            self.vectors = vector[None] if self.vectors is None else np.concatenate([self.vectors, vector[None]])


def task_group(collection: object, task: str) -> str:
    """The cache group of a task of a collection: its type, path and name."""
    return content_hash(type(collection).__name__, str(getattr(collection, "path", "")), task)


def embeddings_dir(cache_root: Path, encoder_key: str) -> Path:
    """The folder of one encoder's cached vectors, beside the task cache's instances/ and collections/."""
    return Path(cache_root) / "embeddings" / encoder_key


def _read(path: Path) -> _Group:
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        column = table.column("embedding").combine_chunks()
        vectors = column.values.to_numpy().reshape(len(table), column.type.list_size)
        version = (table.schema.metadata or {}).get(_VERSION, b"").decode()
        rows = (table.column("row").to_numpy() if "row" in table.column_names  # files without rows: by key only
                else np.full(len(table), -1, np.int64))
        return _Group(version, table.column("key").to_pylist(), rows, vectors)
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return _Group()  # missing or unreadable: recompute


def _write(path: Path, group: _Group) -> None:
    assert group.vectors is not None
    dim = group.vectors.shape[1]
    table = pa.table({"key": pa.array(group.keys, pa.string()), "row": pa.array(group.rows, pa.int64()),
                      "embedding": pa.FixedSizeListArray.from_arrays(
                          pa.array(group.vectors.astype(np.float32).reshape(-1), pa.float32()), dim)})
    table = table.replace_schema_metadata({_VERSION: group.version.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write_bytes(path, memoryview(sink.getvalue()))  # type: ignore[arg-type]


def cached_embeddings(folder: Path, requests: Sequence[EmbeddingRequest],
                      encode: Callable[[list[str]], np.ndarray]) -> tuple[list[np.ndarray], int]:
    """The vectors of every request's rows (one array per request, in order) and how many texts were embedded.

    `encode(texts) -> (n, d) array` is called at most once, on every missing text of every request,
    so a cold run batches across tasks and shows one progress bar.
    """
    groups: dict[str, _Group] = {}
    out: list[np.ndarray | None] = [None] * len(requests)
    pending: list[tuple[int, list[str], list[str]]] = []  # (request, texts, hashes) not found by row
    for i, r in enumerate(requests):
        group = groups.get(r.group)
        if group is None:
            group = groups[r.group] = _read(folder / f"{r.group}.arrow")
        found = group.find_rows(r.version, np.asarray(r.rows, np.int64))
        if found is not None:
            out[i] = group.vectors[found]
            continue
        texts = list(r.texts())
        pending.append((i, texts, [content_hash(t) for t in texts]))
    missing: dict[str, str] = {}
    for i, texts, hashes in pending:
        index = groups[requests[i].group].by_key()
        for h, text in zip(hashes, texts, strict=True):
            if h not in index:
                missing.setdefault(h, text)
    new = dict(zip(missing, encode(list(missing.values())), strict=True)) if missing else {}
    changed: dict[str, None] = {}
    for i, _, hashes in pending:
        r = requests[i]
        group = groups[r.group]
        index = group.by_key()
        vectors = np.stack([new[h] if h in new else group.vectors[index[h]] for h in hashes])
        group.add(r.version, hashes, np.asarray(r.rows, np.int64), vectors)
        out[i] = vectors
        changed[r.group] = None
    for name in changed:
        _write(folder / f"{name}.arrow", groups[name])
    return [v if v is not None else np.zeros((0, 0), np.float32) for v in out], len(missing)
