"""Hugging Face datasets as task collections: one row per instance, grouped into tasks by a column.

The dataset is a hub name (`datasets.load_dataset`) or a local path: a `save_to_disk` folder
(`datasets.load_from_disk`), a `.parquet`, `.jsonl` or `.json` file, or a folder of such files. A
column mapping names the columns (defaults in brackets): `task` [task], `input` [input], `output`
[output; a string or a list of strings], and the optional `definition` [definition], `category`
[category; a string or a list], `id` [id; else `<task>-<row>`]. The task's header (definition,
category) is read from its first row.

Rows are grouped by task with a stable Arrow/numpy sort (row order kept within a task) and each
task is written to the cache once, keyed by the dataset's fingerprint (saved datasets), the file
content hash (local files) or the loaded dataset's fingerprint (hub).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixtune.config import suggest
from mixtune.errors import DataError
from mixtune.tasks import cache
from mixtune.tasks.base import IndexedCollection
from mixtune.tasks.schema import INSTANCE_SCHEMA

COLUMN_ROLES = ("task", "definition", "input", "output", "category", "id")
REQUIRED_ROLES = ("task", "input", "output")
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


class HFCollection(IndexedCollection):
    """Tasks from a Hugging Face dataset (hub name or local path), grouped by a task column."""

    kind = "hf"

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None, *, name: str | None = None,
                 columns: dict[str, str] | None = None, split: str = "train", **load_kwargs: Any) -> None:
        self.columns = _column_mapping(columns)
        self._explicit = set(columns or {})
        self.hf_split = split
        local = Path(path).expanduser()
        is_local = local.exists()
        display = local.resolve() if is_local else str(path)
        default_name = local.stem if is_local else str(path).rstrip("/").split("/")[-1]
        super().__init__(name or default_name, display, cache.cache_root(cache_dir))
        self._load_kwargs = load_kwargs
        self.index_stats: dict[str, int] = {}
        dataset = None
        if is_local:
            source_key = _local_key(local)
        else:
            dataset = self._load()
            source_key = f"fingerprint:{dataset._fingerprint}"
        ident = json.dumps([source_key, self.columns, split], sort_keys=True)
        mpath = cache.manifest_path(self.cache_root, self.kind, ident)
        with cache.manifest_lock(mpath):
            entries = cache.load_manifest(mpath, ident).get("entries")
            if entries is None or not all(cache.instances_path(self.cache_root, e["key"]).exists()
                                          for e in entries.values()):
                dataset = dataset if dataset is not None else self._load()
                entries = self._index(dataset, ident)
                cache.save_manifest(mpath, ident, entries, source=str(display))
                self.index_stats = {"tasks": len(entries), "indexed": len(entries)}
            else:
                self.index_stats = {"tasks": len(entries), "indexed": 0}
        for task, e in entries.items():
            self._add(task, e["key"], e["header"])

    def _load(self):
        """The dataset as a `datasets.Dataset` (the chosen split of a DatasetDict)."""
        import datasets

        path = Path(self.path) if isinstance(self.path, Path) else None
        try:
            if path is None:
                ds = datasets.load_dataset(str(self.path), split=self.hf_split, **self._load_kwargs)
            elif path.is_dir() and any((path / f).exists() for f in
                                       ("state.json", "dataset_dict.json", "dataset_info.json")):
                ds = datasets.load_from_disk(str(path))
            elif path.is_file():
                builder = FILE_BUILDERS.get(path.suffix.lower())
                if builder is None:
                    raise DataError(f"unsupported file type {path.suffix!r}", path=path,
                                    hint=f"use one of {', '.join(FILE_BUILDERS)} or a save_to_disk folder")
                kwargs = {"cache_dir": str(self.cache_root / "hf-datasets"), **self._load_kwargs}
                ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
            else:
                ds = datasets.load_dataset(str(path), split=self.hf_split, **self._load_kwargs)
        except DataError:
            raise
        except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
            raise DataError(f"cannot load the dataset: {e}", path=self.path,
                            hint="give a hub name, a save_to_disk folder or a parquet/jsonl file") from None
        if isinstance(ds, datasets.DatasetDict):
            if self.hf_split not in ds:
                raise DataError(f"the dataset has no split {self.hf_split!r}", path=self.path, field="split",
                                hint=suggest(self.hf_split, ds) or f"splits: {', '.join(ds)}")
            ds = ds[self.hf_split]
        if ds._indices is not None:
            ds = ds.flatten_indices()
        return ds

    def _index(self, dataset, ident: str) -> dict[str, Any]:
        table = dataset.data.table
        have = table.column_names
        for role, column in self.columns.items():
            if column not in have and (role in REQUIRED_ROLES or role in self._explicit):
                raise DataError(f"the dataset has no column {column!r} for '{role}'", path=self.path,
                                field=f"columns.{role}",
                                hint=f"map '{role}' to one of its columns: {', '.join(have)}")
        task_col = _text_column(table.column(self.columns["task"]), self.path, "task")
        inputs = _text_column(table.column(self.columns["input"]), self.path, "input")
        outputs = _output_column(table.column(self.columns["output"]), self.path)
        ids = (_text_column(table.column(self.columns["id"]), self.path, "id")
               if self.columns["id"] in have else None)
        encoded = pc.dictionary_encode(task_col).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(encoded.dictionary))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = pa.array(order)
        grouped = pa.table({"input": inputs.take(rows), "output": outputs.take(rows),
                            **({"id": ids.take(rows)} if ids is not None else {})})
        definition = table.column(self.columns["definition"]) if self.columns["definition"] in have else None
        category = table.column(self.columns["category"]) if self.columns["category"] in have else None
        entries: dict[str, Any] = {}
        for code, task in enumerate(encoded.dictionary.to_pylist()):
            n, start = int(counts[code]), int(starts[code])
            if n == 0:
                continue
            if not task.strip():
                raise DataError("a row has an empty task name", path=self.path,
                                field=f"columns.task ({self.columns['task']})")
            first = int(order[start])
            part = grouped.slice(start, n)
            task_ids = part.column("id") if ids is not None else pa.array([f"{task}-{i}" for i in range(n)])
            header = {
                "definition": _first_text(definition, first),
                "categories": _first_list(category, first),
                "num_instances": n,
            }
            key = cache.content_hash("hf", ident, task)
            instances = pa.Table.from_arrays([task_ids, part.column("input"), part.column("output")],
                                             schema=INSTANCE_SCHEMA)
            cache.write_instances(self.cache_root, key, instances, header)
            entries[task] = {"key": key, "header": header}
        return entries


def _column_mapping(columns: dict[str, str] | None) -> dict[str, str]:
    mapping = {role: role for role in COLUMN_ROLES}
    for role, column in (columns or {}).items():
        if role not in COLUMN_ROLES:
            raise DataError(f"unknown column role {role!r}", field=f"columns.{role}",
                            hint=suggest(role, COLUMN_ROLES) or f"roles: {', '.join(COLUMN_ROLES)}")
        if not isinstance(column, str) or not column:
            raise DataError(f"expected a column name, got {column!r}", field=f"columns.{role}")
        mapping[role] = column
    return mapping


def _local_key(path: Path) -> str:
    """A key for a local dataset: a save_to_disk folder's fingerprints (state.json files) and file sizes;
    otherwise a content hash of the file, or of every file in the folder."""
    states = sorted(path.rglob("state.json")) if path.is_dir() else []
    if states:
        parts: list[bytes | str] = []
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            parts += [str(f.relative_to(path)), f.read_bytes() if f.name == "state.json" else str(f.stat().st_size)]
        return "saved:" + cache.content_hash(*parts)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    parts = []
    for f in files:
        parts.append(str(f.relative_to(path)) if f != path else f.name)
        parts.append(cache.content_hash(f.read_bytes()))
    return "files:" + cache.content_hash(*parts)


def _text_column(column: pa.ChunkedArray, where: Any, role: str) -> pa.ChunkedArray:
    if role in ("task", "id") and pa.types.is_integer(column.type):
        column = column.cast(pa.string())  # numeric task or instance ids
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"column for '{role}' must hold strings, got {column.type}", path=where,
                        field=f"columns.{role}")
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise DataError(f"row {row} has no '{role}' (null)", path=where, field=f"columns.{role}")
    return column.cast(pa.string())


def _output_column(column: pa.ChunkedArray, where: Any) -> pa.ChunkedArray:
    """Outputs as list<string>: a string column is wrapped; empty or null references are errors."""
    hint = "every row needs at least one reference output string"
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _text_column(column, where, "output").combine_chunks()
        offsets = pa.array(np.arange(len(column) + 1, dtype=np.int32))
        return pa.chunked_array([pa.ListArray.from_arrays(offsets, column)])
    if not ((pa.types.is_list(column.type) or pa.types.is_large_list(column.type))
            and (pa.types.is_string(column.type.value_type) or pa.types.is_large_string(column.type.value_type))):
        raise DataError(f"column for 'output' must hold a string or a list of strings, got {column.type}",
                        path=where, field="columns.output")
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    bad = pc.equal(lengths, 0)
    if pc.any(bad).as_py():
        raise DataError(f"row {pc.index(bad, True).as_py()}: 'output' is empty", path=where,
                        field="columns.output", hint=hint)
    flat = pc.list_flatten(column)
    if flat.null_count:
        raise DataError("an 'output' list holds a null", path=where, field="columns.output", hint=hint)
    return column.cast(pa.list_(pa.string()))


def _first_text(column: pa.ChunkedArray | None, row: int) -> str:
    if column is None:
        return ""
    value = column[row].as_py()
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def _first_list(column: pa.ChunkedArray | None, row: int) -> list[str]:
    if column is None:
        return []
    value = column[row].as_py()
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
