"""What every indexed collection shares: task lookup, memory-mapped instances, split files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from mixtune.config import suggest
from mixtune.errors import DataError
from mixtune.tasks import cache
from mixtune.tasks.headers import check_task_name, refuse_duplicate_ids
from mixtune.tasks.schema import Instance, Split, TaskInfo

SPLIT_FILES = ("train", "test", "excluded")


class IndexedCollection:
    """A collection whose tasks are indexed in the cache: subclasses fill `_infos` and `_files`."""

    kind = "collection"

    def __init__(self, name: str, path: Path | str, root: Path) -> None:
        self.name = name
        self.path = path
        self.cache_root = root
        self._infos: dict[str, TaskInfo] = {}
        self._files: dict[str, Path] = {}
        self._tables: dict[str, pa.Table] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, path={str(self.path)!r}, tasks={len(self._infos)})"

    def _add(self, task: str, key: str, header: dict[str, Any]) -> None:
        self._infos[task] = cache.task_info(task, self.name, header)
        self._files[task] = cache.instances_path(self.cache_root, key)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, task: object) -> bool:
        return task in self._infos

    def task_names(self) -> list[str]:
        """All task names, sorted."""
        return sorted(self._infos)

    def _check(self, task: str) -> None:
        if task not in self._infos:
            raise DataError(f"unknown task {task!r} in collection {self.name!r}", path=self.path,
                            hint=suggest(task, self._infos) or "list the tasks with task_names()")

    def info(self, task: str) -> TaskInfo:
        """The header of `task` (DataError with near names when unknown)."""
        self._check(task)
        return self._infos[task]

    def instances(self, task: str) -> pa.Table:
        """The task's instances (id, input, output list<string>) in file order, memory-mapped."""
        self._check(task)
        table = self._tables.get(task)
        if table is None:
            path = self._files[task]
            if not path.exists():  # the cache was cleaned since this collection was opened
                self._reindex(task)
                path = self._files[task]
            table = cache.read_instances(path)
            refuse_duplicate_ids(table, task, self.path)
            self._tables[task] = table
        return table

    def content_key(self, task: str) -> str:
        """A hash of the task's content (its cache key): equal keys mean identical instances."""
        self._check(task)
        return self._files[task].stem

    def instance(self, task: str, row: int) -> Instance:
        """Instance number `row` (0-based, file order) of `task`."""
        table = self.instances(task)
        if not 0 <= row < table.num_rows:
            raise IndexError(f"task {task!r} has {table.num_rows} instances; row {row} is out of range")
        out = table.column("output")[row].as_py()
        return Instance(id=table.column("id")[row].as_py(), input=table.column("input")[row].as_py(),
                        output=tuple(out))

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names (in the given order) that are not tasks of this collection."""
        return [n for n in names if n not in self._infos]

    def split(self, name: str = "default") -> Split | None:
        """The named split read from `splits/<name>/`, or None when the collection has none."""
        if not isinstance(self.path, Path) or not self.path.is_dir():
            return None
        return read_split(self.path / "splits", name)

    def _reindex(self, task: str) -> None:
        raise DataError(f"the cache entry of task {task!r} disappeared", path=self._files[task],
                        hint="open the collection again to rebuild it")


def read_split(splits_dir: Path, name: str) -> Split | None:
    """Read `splits_dir/<name>/{train,test,excluded}_tasks.txt` (a missing file is an empty list)."""
    check_task_name(name, path=splits_dir, field="split")
    folder = splits_dir / name
    if not folder.is_dir():
        return None
    lists: dict[str, tuple[str, ...]] = {}
    for part in SPLIT_FILES:
        file = folder / f"{part}_tasks.txt"
        lists[part] = read_task_list(file) if file.exists() else ()
    if not any(lists.values()) and not any((folder / f"{p}_tasks.txt").exists() for p in SPLIT_FILES):
        raise DataError("the split folder has none of train_tasks.txt, test_tasks.txt, excluded_tasks.txt",
                        path=folder, hint="add the task lists, one task name per line")
    return Split(name=name, train=lists["train"], test=lists["test"], excluded=lists["excluded"])


def read_task_list(file: Path) -> tuple[str, ...]:
    """Task names, one per line; blank lines and `#` comments are skipped, whitespace stripped."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", path=file) from None
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        check_task_name(line, path=file, field=f"line {number}")
        names.append(line)
    return tuple(names)
