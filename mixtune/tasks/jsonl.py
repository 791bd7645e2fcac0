"""Your own tasks in JSONL: one file with many tasks, or a folder with one `<task>.jsonl` per task.

Each line is one JSON object. An instance line has

    {"task": "my_task", "input": "...", "output": "..." or ["...", ...], "id": "optional"}

`task` is required in a single file and optional in a folder's `<task>.jsonl` (where it must match
the file name). Without `id`, instances are named `<task>-<n>` (n counts from 0 in file order).

A task's header uses the keys `definition` (a string, or a list whose first entry is used),
`categories` (or `category`; a string or a list), `positive_examples` / `negative_examples` (lists
of {input, output, explanation?}), `input_language`, `output_language`, `instruction_language`.
They can come from:

1. a sidecar YAML: `tasks.yaml` next to the JSONL file (or in the folder) mapping each task name to
   its header, and, in a folder, `<task>.yaml` holding one task's header;
2. header keys on a line of the task, either on an instance line or on a header-only line with no
   `input` (e.g. the first line: {"task": "my_task", "definition": "Answer the question."}).

Line headers override sidecar values; giving one key twice with different values in the JSONL is an
error. The definition may be left out (empty: the prompt is then the input alone). A folder may
have `splits/<name>/{train,test,excluded}_tasks.txt` as a SuperNI checkout does. Every error names
the file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mixtune.errors import DataError
from mixtune.limits import json_loads, yaml_load
from mixtune.tasks import cache
from mixtune.tasks.base import IndexedCollection
from mixtune.tasks.headers import (
    HEADER_FIELDS,
    check_task_name,
    has_lone_surrogate,
    header_from,
    instance_columns,
    refuse_duplicate_ids,
)

INSTANCE_KEYS = ("task", "input", "output", "id")


class JsonlCollection(IndexedCollection):
    """Tasks from a JSONL file (with a `task` key per line) or a folder of `<task>.jsonl` files."""

    kind = "jsonl"

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None, *, name: str | None = None) -> None:
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise DataError("JSONL collection not found", path=path,
                            hint="give a .jsonl file or a folder of <task>.jsonl files")
        super().__init__(name or path.stem, path, cache.cache_root(cache_dir))
        if path.is_dir():
            files = sorted(p for p in path.glob("*.jsonl") if not p.name.startswith("."))
            if not files:
                raise DataError("no <task>.jsonl files in the folder", path=path,
                                hint="write one JSONL file per task, named after the task")
            sidecars = [path / "tasks.yaml", *(f.with_suffix(".yaml") for f in files)]
        else:
            files = [path]
            sidecars = [path.parent / "tasks.yaml"]
        sidecars = [s for s in sidecars if s.exists()]
        parts: list[bytes | str] = []
        for f in files + sidecars:
            parts += [f.name, f.read_bytes()]
        ident = json.dumps([str(path), cache.content_hash(*parts)])
        mpath = cache.manifest_path(self.cache_root, self.kind, str(path))
        self.index_stats = {"indexed": 0}
        with cache.manifest_lock(mpath):
            entries = cache.load_manifest(mpath, ident).get("entries")
            if entries is None or not all(cache.instances_path(self.cache_root, e["key"]).exists()
                                          for e in entries.values()):
                entries = self._index(files, sidecars, ident, folder=path.is_dir())
                cache.save_manifest(mpath, ident, entries)
                self.index_stats = {"indexed": len(entries)}
        self.index_stats["tasks"] = len(entries)
        for task, e in entries.items():
            self._add(task, e["key"], e["header"])

    def _index(self, files: list[Path], sidecars: list[Path], ident: str, *, folder: bool) -> dict[str, Any]:
        defaults: dict[str, dict[str, Any]] = {}
        for s in sidecars:
            data = _load_sidecar(s)
            if s.name == "tasks.yaml":
                for task, header in data.items():
                    if not isinstance(header, dict):
                        raise DataError("expected a mapping of header keys", path=s, field=str(task))
                    defaults.setdefault(str(task), {}).update(header)
            else:
                defaults.setdefault(s.stem, {}).update(data)
        tasks: dict[str, dict[str, Any]] = {}
        for f in files:
            _read_lines(f, tasks, f.stem if folder else None)
        entries: dict[str, Any] = {}
        for task, parsed in tasks.items():
            fields = {**defaults.get(task, {}), **parsed["header"]}
            if "category" in fields:
                fields.setdefault("categories", fields.pop("category"))
            unknown = sorted(set(fields) - set(HEADER_FIELDS))
            if unknown:
                raise DataError(f"unknown header key {unknown[0]!r} for task {task!r}", path=parsed["file"],
                                hint=f"header keys: {', '.join(HEADER_FIELDS)}, category")
            header = header_from(fields, path=parsed["file"], require_definition=False)
            ids, inputs, outputs = instance_columns(parsed["instances"], task=task, path=parsed["file"],
                                                    field="instances", line_numbers=parsed["lines"],
                                                    allow_string_output=True)
            header["num_instances"] = len(ids)
            key = cache.content_hash("jsonl", ident, task)
            table = cache.build_table(ids, inputs, outputs)
            refuse_duplicate_ids(table, task, parsed["file"])
            cache.write_instances(self.cache_root, key, table, header)
            entries[task] = {"key": key, "header": header}
        missing = sorted(set(defaults) - set(tasks))
        if missing and any(s.name == "tasks.yaml" for s in sidecars):
            raise DataError(f"tasks.yaml describes task {missing[0]!r}, which has no instances",
                            path=sidecars[0].parent / "tasks.yaml", field=missing[0],
                            hint="add its instances or remove it from tasks.yaml")
        return entries


def _load_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise DataError(f"{line}invalid YAML: {getattr(e, 'problem', None) or e}", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    return data


def _read_lines(path: Path, tasks: dict[str, dict[str, Any]], file_task: str | None) -> None:
    """Parse one JSONL file into `tasks` (task -> header fields, instances, line numbers)."""
    if file_task is not None:
        check_task_name(file_task, path=path, field="file name")
        tasks.setdefault(file_task, {"header": {}, "instances": [], "lines": [], "file": path})
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json_loads(raw)
            except UnicodeDecodeError as e:
                raise DataError(f"line {number}: not UTF-8 text ({e.reason})", path=path) from None
            except json.JSONDecodeError as e:
                raise DataError(f"line {number}, column {e.colno}: malformed JSON: {e.msg}", path=path,
                                hint="each line must be one complete JSON object") from None
            if has_lone_surrogate(raw, obj):
                raise DataError(f"line {number}: an unpaired UTF-16 surrogate escape (\\ud800-\\udfff) is not "
                                "text", path=path, hint="fix or remove the broken \\u escape")
            if not isinstance(obj, dict):
                raise DataError(f"line {number}: expected a JSON object, got {type(obj).__name__}", path=path)
            task = obj.get("task", file_task)
            if task is None:
                raise DataError(f"line {number}: no 'task'", path=path, field="task",
                                hint="name the task on every line, or use a folder of <task>.jsonl files")
            if not isinstance(task, str):
                raise DataError(f"line {number}: 'task' must be a string, got {task!r}", path=path, field="task")
            if file_task is not None and task != file_task:
                raise DataError(f"line {number}: task {task!r} in the file of task {file_task!r}", path=path,
                                field="task", hint=f"move the line to {task}.jsonl or drop its 'task' key")
            check_task_name(task, path=path, field=f"line {number}: task")
            entry = tasks.setdefault(task, {"header": {}, "instances": [], "lines": [], "file": path})
            for key, value in obj.items():
                if key in INSTANCE_KEYS:
                    continue
                if key in entry["header"] and entry["header"][key] != value:
                    raise DataError(f"line {number}: task {task!r} has a second, different {key!r}", path=path,
                                    field=key, hint="give each header key once per task")
                entry["header"][key] = value
            if "input" in obj or "output" in obj:
                entry["instances"].append(obj)
                entry["lines"].append(number)
