"""Super-NaturalInstructions collections: a folder with `tasks/*.json` and `splits/<name>/*_tasks.txt`.

Each task file is parsed once: its instances go to a memory-mapped Arrow file in the cache, keyed by
an xxhash of the file's bytes, and its header to a per-collection manifest. The manifest records
every file's (size, mtime_ns), so re-opening an unchanged collection costs one stat() per file and no
JSON parsing or hashing. A file whose size or mtime changed is hashed again and, when its content
changed, parsed again. A file modified within two seconds of its hashing is re-checked by hash on the
next open, since a coarse file-system clock could hide a second change with the same size and mtime.

Files are indexed one at a time (a worker process holds at most one parsed task file; a writer
thread writes and fsyncs the previous one meanwhile), in a pool of
up to two spawned processes (`workers=`, env MIXTUNE_INDEX_WORKERS) when at least 64 MB of JSON
needs indexing; as with any multiprocessing, a script that opens a large unindexed collection should
guard its entry point with `if __name__ == "__main__":` (otherwise indexing falls back to one process).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from mixtune.errors import DataError
from mixtune.tasks import cache
from mixtune.tasks.base import IndexedCollection
from mixtune.tasks.headers import (
    SUPERNI_FIELDS,
    check_task_name,
    header_from,
    instance_table,
    parse_json,
    refuse_duplicate_ids,
)

log = logging.getLogger(__name__)

RACY_NS = 2_000_000_000  # a file modified this close to its hashing is hashed again on the next open
ENTRY_KEYS = frozenset({"size", "mtime_ns", "key", "verified_ns", "header"})
CHUNK = 16  # task files per worker job
POOL_MIN_BYTES = 64 << 20  # index in worker processes only when this much JSON needs parsing


class SuperNICollection(IndexedCollection):
    """A SuperNI-format folder (a checkout of allenai/natural-instructions, or the bundled sample)."""

    kind = "superni"

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None, *, name: str | None = None,
                 workers: int | None = None) -> None:
        path = Path(path).expanduser().resolve()
        super().__init__(name or path.name, path, cache.cache_root(cache_dir))
        self.tasks_dir = path / "tasks"
        if not path.is_dir():
            raise DataError("collection folder not found", path=path,
                            hint="give a SuperNI checkout (a folder with tasks/*.json) or 'bundled'")
        if not self.tasks_dir.is_dir():
            raise DataError("no tasks/ folder", path=path,
                            hint="a SuperNI collection is a folder with tasks/*.json and splits/<name>/")
        self.index_stats: dict[str, int] = {}
        self._index(workers)

    def _index(self, workers: int | None) -> None:
        ident = str(self.path)
        mpath = cache.manifest_path(self.cache_root, self.kind, ident)
        with cache.manifest_lock(mpath):
            self._index_locked(workers, ident, mpath)

    def _index_locked(self, workers: int | None, ident: str, mpath: Path) -> None:
        old = cache.load_manifest(mpath, ident).get("entries", {})
        entries: dict[str, Any] = {}
        todo: list[tuple[str, os.stat_result, dict | None]] = []
        with os.scandir(self.tasks_dir) as it:
            files = sorted((e.name, e) for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        if not files:
            raise DataError("no task files (tasks/*.json)", path=self.tasks_dir,
                            hint="a SuperNI collection keeps one JSON file per task in tasks/")
        for fname, entry in files:
            if fname not in old:
                check_task_name(fname[:-5], path=self.tasks_dir / fname, field="file name")
            st = entry.stat()
            e = old.get(fname)
            if not isinstance(e, dict) or not e.keys() >= ENTRY_KEYS:
                e = None  # no entry, or one a damaged manifest left incomplete
            if (e is not None and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns
                    and st.st_mtime_ns < e["verified_ns"] - RACY_NS):
                entries[fname] = e
            else:
                todo.append((fname, st, e))
        stats = {"tasks": len(files), "checked": len(todo), "parsed": 0}
        error: DataError | None = None
        if todo:
            size = sum(st.st_size for _, st, _ in todo)
            log.info("indexing %d task file(s) (%.0f MB) of %s into %s (once: later runs reuse the index)",
                     len(todo), size / 1e6, self.path, self.cache_root)
            jobs = [(str(self.tasks_dir / f), str(self.cache_root), f[:-5], e["key"] if e else None)
                    for f, _, e in todo]
            results = self._run(jobs, workers, sum(st.st_size for _, st, _ in todo))
            for (fname, st, e), res in zip(todo, results, strict=True):
                if "error" in res:
                    error = error or DataError(res["error"][0], path=res["error"][1], field=res["error"][2],
                                               hint=res["error"][3])
                    continue
                stats["parsed"] += res["parsed"]
                header = res["header"] if res["header"] is not None else e["header"]
                entries[fname] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "key": res["key"],
                                  "verified_ns": res["verified_ns"], "header": header}
        if todo or len(entries) != len(old):
            cache.save_manifest(mpath, ident, entries)
        if error is not None:
            raise error
        self.index_stats = stats
        for fname, e in entries.items():
            self._add(fname[:-5], e["key"], e["header"])

    def _run(self, jobs: list[tuple], workers: int | None, total_bytes: int) -> list[dict]:
        if workers is None:
            workers = int(os.environ.get("MIXTUNE_INDEX_WORKERS", 0)) or min(2, os.cpu_count() or 1)
            workers = workers if total_bytes >= POOL_MIN_BYTES else 1
        if workers <= 1 or len(jobs) < 2:
            return index_task_files(jobs)
        ctx = multiprocessing.get_context("spawn")
        chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                return [res for part in pool.map(index_task_files, chunks) for res in part]
        except BrokenProcessPool:
            # Spawned workers re-import the main script; without an `if __name__ == "__main__":`
            # guard (or from stdin) they die. Index here instead: finished entries are reused.
            warnings.warn("task indexing workers failed to start; indexing in this process "
                          "(guard your script with `if __name__ == '__main__':` or pass workers=1)",
                          RuntimeWarning, stacklevel=3)
            return index_task_files(jobs)

    def _reindex(self, task: str) -> None:
        res = index_task_file(str(self.tasks_dir / f"{task}.json"), str(self.cache_root), task, None)
        if "error" in res:
            raise DataError(res["error"][0], path=res["error"][1], field=res["error"][2], hint=res["error"][3])
        self._add(task, res["key"], res["header"])


def index_task_files(jobs: list[tuple]) -> list[dict[str, Any]]:
    """`index_task_file` for each job, with the cache writes (and their fsync) in a background thread.

    Parsing the next file overlaps with writing the previous one; at most two serialized tasks wait
    for the writer, and every write has finished when this returns.
    """
    results = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque = deque()

        def submit(fn, *args):
            while len(pending) >= 2:
                pending.popleft().result()
            pending.append(writer.submit(fn, *args))

        for job in jobs:
            results.append(index_task_file(*job, submit=submit))
        for future in pending:
            future.result()
    return results


def index_task_file(file: str, root: str, task: str, known_key: str | None, *, submit=None) -> dict[str, Any]:
    """Hash one task file and, unless its instance file exists already, parse and cache it.

    Returns {"key", "header" (None when `known_key` matched), "parsed", "verified_ns"} or {"error": ...}
    (errors travel as plain tuples, so this also works in a worker process). With `submit`, the
    cache write is handed to it (`submit(fn, *args)`) instead of being done here.
    """
    verified_ns = time.time_ns()
    try:
        try:
            data = Path(file).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read the task file: {e.strerror}", path=file) from None
        key = cache.content_hash(task, data)
        out = {"key": key, "header": None, "parsed": 0, "verified_ns": verified_ns}
        target = cache.instances_path(Path(root), key)
        if key == known_key and target.exists():
            return out
        out["header"] = cache.read_header(target) if target.exists() else None
        if out["header"] is None:
            header, table = parse_task_file(data, file, task)
            del data
            data = cache.serialize_instances(table, header)
            del table
            (submit or _call)(cache.write_buffer, Path(root), key, data)
            out["header"], out["parsed"] = header, 1
        return out
    except DataError as e:
        return {"error": (e.message, e.path, e.field, e.hint)}


def _call(fn, *args):
    return fn(*args)


def parse_task_file(data: bytes, path: str | Path, task: str):
    """Validate a SuperNI task file's bytes into (header dict, INSTANCE_SCHEMA table)."""
    obj = parse_json(data, path)
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object with 'Definition' and 'Instances' at the top level, "
                        f"got a {type(obj).__name__}", path=path, hint="a SuperNI task file is one JSON object")
    if "Instances" not in obj:
        raise DataError("the task has no 'Instances'", path=path, field="Instances",
                        hint='add "Instances": [{"id": ..., "input": ..., "output": [...]}, ...]')
    header = header_from(obj, path=path, require_definition=True, names=SUPERNI_FIELDS)
    table = instance_table(obj.pop("Instances"), task=task, path=path)
    refuse_duplicate_ids(table, task, path)
    header["num_instances"] = table.num_rows
    header["extra"] = {k: v for k, v in obj.items() if k not in SUPERNI_FIELDS}
    return header, table
