"""The task cache: one memory-mappable Arrow IPC file per task, plus a manifest per collection.

Layout under the cache root (env `MIXTUNE_CACHE`, default `~/.cache/mixtune`)::

    tasks/v1/instances/<key>.arrow          instances (INSTANCE_SCHEMA) + the task header as schema metadata
    tasks/v1/collections/<kind>-<id>.json   per collection: source file (size, mtime_ns) -> key + header

`<key>` is a content hash (xxhash) of what the task was read from, so an instance file is never
stale: a changed source gets a new key. Every file is written atomically (temporary file + rename),
so an interrupted indexing run leaves either a complete entry or none. Opening a collection holds
`<manifest>.lock` (filelock), so when several processes (the ranks of a job) open the same unindexed
collection, one indexes it and the others wait, then find the manifest fresh.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from mixtune.io import atomic_write_bytes, atomic_write_json
from mixtune.tasks.schema import INSTANCE_SCHEMA, Demonstration, TaskInfo

FORMAT_VERSION = "v1"
HEADER_KEY = b"mixtune.header"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder for task indexes: `cache_dir`, else env MIXTUNE_CACHE, else ~/.cache/mixtune."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("MIXTUNE_CACHE"):
        root = Path(os.environ["MIXTUNE_CACHE"])
    else:
        root = Path.home() / ".cache" / "mixtune"
    return root.expanduser() / "tasks" / FORMAT_VERSION


def content_hash(*parts: bytes | str) -> str:
    """A 128-bit xxhash of the given parts (strings are UTF-8 encoded), as hex."""
    h = xxhash.xxh3_128()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def instances_path(root: Path, key: str) -> Path:
    return root / "instances" / f"{key}.arrow"


def build_table(ids: list[str], inputs: list[str], outputs: list[list[str]]) -> pa.Table:
    """An INSTANCE_SCHEMA table from Python columns."""
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(inputs, pa.string()),
         pa.array(outputs, pa.list_(pa.string()))],
        schema=INSTANCE_SCHEMA,
    )


def serialize_instances(table: pa.Table, header: dict[str, Any]) -> pa.Buffer:
    """A task's instances and header as the bytes of an Arrow IPC file."""
    table = table.cast(INSTANCE_SCHEMA).replace_schema_metadata(
        {HEADER_KEY: json.dumps(header, ensure_ascii=False).encode("utf-8")})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64 * 1024)
    return sink.getvalue()


def write_buffer(root: Path, key: str, data: pa.Buffer) -> Path:
    """Write serialized instances atomically as `<key>.arrow`; returns its path."""
    path = instances_path(root, key)
    atomic_write_bytes(path, memoryview(data))  # type: ignore[arg-type]
    return path


def write_instances(root: Path, key: str, table: pa.Table, header: dict[str, Any]) -> Path:
    """Write a task's instances and header atomically as `<key>.arrow`; returns its path."""
    return write_buffer(root, key, serialize_instances(table, header))


def read_header(path: Path) -> dict[str, Any] | None:
    """The header stored in an instance file, or None when the file is missing or unreadable."""
    try:
        with pa.memory_map(str(path)) as source:
            meta = pa.ipc.open_file(source).schema.metadata or {}
        return json.loads(meta[HEADER_KEY])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None


def read_instances(path: Path) -> pa.Table:
    """The instances of one task, memory-mapped (no copy of the data into memory)."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return table.replace_schema_metadata(None)


def manifest_path(root: Path, kind: str, ident: str) -> Path:
    return root / "collections" / f"{kind}-{content_hash(ident)[:20]}.json"


#: Set (to 1) by `mixtune --reindex`: every task file is read again, whatever its size and mtime say.
REINDEX_ENV = "MIXTUNE_REINDEX"


def load_manifest(path: Path, ident: str) -> dict[str, Any]:
    """A collection manifest, or an empty one when it is missing, corrupt, for another source, or when
    env MIXTUNE_REINDEX=1 asks for a full re-read (`mixtune --reindex`)."""
    if os.environ.get(REINDEX_ENV) == "1":
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if (not isinstance(data, dict) or data.get("ident") != ident or data.get("version") != FORMAT_VERSION
            or not isinstance(data.get("entries"), dict)):
        return {}
    return data


def save_manifest(path: Path, ident: str, entries: dict[str, Any], **extra: Any) -> None:
    atomic_write_json(path, {"version": FORMAT_VERSION, "ident": ident, **extra, "entries": entries},
                      indent=None, ensure_ascii=False)


@contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """Hold `<manifest>.lock` while checking and (re)indexing one collection: one process at a time.

    Where the lock file cannot be created (a read-only, already warm cache folder) no lock is taken.
    """
    from filelock import FileLock

    lock = FileLock(f"{path}.lock", is_singleton=True)  # re-entrant within one process
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        locked = True
    except OSError:
        locked = False
    try:
        yield
    finally:
        if locked:
            lock.release()


def _demos(items: list) -> tuple[Demonstration, ...]:
    return tuple(Demonstration(input=d["input"], output=d["output"], explanation=d.get("explanation", ""))
                 for d in items)


def task_info(name: str, source: str, header: dict[str, Any]) -> TaskInfo:
    """A TaskInfo from a stored header (see `headers.header_from`)."""
    return TaskInfo(
        name=name,
        definition=header.get("definition", ""),
        positive_examples=_demos(header.get("positive_examples", [])),
        negative_examples=_demos(header.get("negative_examples", [])),
        categories=tuple(header.get("categories", [])),
        input_language=tuple(header.get("input_language", [])),
        output_language=tuple(header.get("output_language", [])),
        instruction_language=tuple(header.get("instruction_language", [])),
        num_instances=int(header.get("num_instances", 0)),
        source=source,
        extra=dict(header.get("extra", {})),
    )
