"""The candidate tasks and the targets of `mixture select`.

Candidates are the tasks of a collection (or of a mixture file's sources) minus the targets and minus
every task the split holds out; a target is a task of the collection, or a user's JSONL file of
unlabeled inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.config import suggest
from mixtune.errors import ConfigError, DataError
from mixtune.mixtures.task_select.embedding_cache import task_group
from mixtune.tasks.cache import content_hash
from mixtune.tasks.collection import open_collection
from mixtune.tasks.schema import TaskCollection, TaskInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A task that may be selected, with the collection it is read from."""

    task: str
    info: TaskInfo
    collection: TaskCollection = field(repr=False, compare=False)

    @property
    def category(self) -> str:
        return self.info.category


@dataclass(frozen=True)
class Target:
    """A task to select training tasks for: its name and the inputs that describe it."""

    name: str
    inputs: tuple[str, ...]
    rows: tuple[int, ...]  # where each input comes from: its row in the task, or its number in the file
    group: str  # cache group of its embeddings (embedding_cache.task_group, or the target file's path)
    version: str  # the task's content key, or a hash of the file's inputs
    category: str | None = None


@dataclass
class Pool:
    """The candidates (name order), the held-out tasks left out, and what the output mixture needs."""

    candidates: list[Candidate]
    held_out: frozenset[str]
    collections: list[TaskCollection]
    #: per output source: the source spec dict (without `tasks`) and the candidate names it can take
    sources: list[tuple[dict[str, Any], list[str]]]
    #: top-level keys of the output mixture (seed, size, temperature, cap, held_out)
    mixture: dict[str, Any]
    description: str


def collection_pool(path: str, *, type: str = "superni", split: str = "default",
                    cache_dir: str | None = None) -> Pool:
    """Every task of the collection at `path`, minus the tasks `split` holds out (test + excluded)."""
    collection = open_collection(type, path, cache_dir=cache_dir)
    held: frozenset[str] = frozenset()
    held_split = collection.split(split)
    if held_split is not None:
        held = held_split.held_out
    elif split != "default":
        raise ConfigError(f"collection {str(collection.path)!r} has no split {split!r}", field="--split",
                          hint="expected splits/<split>/test_tasks.txt; leave --split out for none")
    names = [t for t in collection.task_names() if t not in held]
    source: dict[str, Any] = {"name": collection.name, "type": type, "path": _path_text(path, collection)}
    mixture: dict[str, Any] = {"seed": 0, "epochs": 1}
    if held_split is not None:
        mixture["held_out"] = {"split": split}
    desc = f"collection {collection.name!r} ({len(collection)} tasks" + (
        f"; split {split!r} holds out {len(collection) - len(names)})" if held_split is not None else ")")
    return Pool([Candidate(t, collection.info(t), collection) for t in names], held, [collection],
                [(source, names)], mixture, desc)


def _path_text(path: str, collection: TaskCollection) -> str:
    if str(path) == "bundled":
        return "bundled"
    return str(collection.path)


def mixture_pool(mixture_path: str, *, overrides: tuple[str, ...] = (), collection: str | None = None,
                 cache_dir: str | None = None) -> Pool:
    """The tasks the sources of a mixture file (nested files included) take, minus what it holds out."""
    from mixtune.mixtures.selection import held_out_tasks, select_tasks
    from mixtune.mixtures.spec import load_mixture

    spec = load_mixture(mixture_path, overrides=list(overrides), collection=collection)
    opened: dict[tuple, TaskCollection] = {}
    held: set[str] = set()
    sources: list[tuple[dict[str, Any], list[str]]] = []
    candidates: dict[str, Candidate] = {}
    used_names: set[str] = set()
    for node in spec.walk():
        by_index: dict[int, TaskCollection] = {}
        for i, source in enumerate(node.sources):
            key = (source.type, source.path, json.dumps(source.columns, sort_keys=True))
            if key not in opened:
                opened[key] = open_collection(source.type, source.path, name=source.name, columns=source.columns,
                                              cache_dir=cache_dir)
            coll = by_index[i] = opened[key]
            chosen = select_tasks(node, i, coll)
            for sel in chosen:
                candidates.setdefault(sel.task, Candidate(sel.task, sel.info, coll))
            data = {"name": _unique(source.name, used_names), "type": source.type, "path": source.path,
                    **source.model_dump(mode="json", exclude={"name", "type", "path", "tasks"},
                                        exclude_defaults=True)}
            sources.append((data, [s.task for s in chosen]))
        held |= held_out_tasks(node, by_index)
    mixture: dict[str, Any] = {"seed": spec.seed}
    mixture.update({k: getattr(spec, k) for k in ("total_examples", "epochs", "max_instances_per_task")
                    if getattr(spec, k) is not None})
    if spec.temperature != 1.0:
        mixture["temperature"] = spec.temperature
    if spec.held_out.split is not None:
        mixture["held_out"] = {"split": spec.held_out.split}
    names = sorted(t for t in candidates if t not in held)
    desc = f"mixture {spec.name!r} ({len(candidates)} tasks; {len(candidates) - len(names)} held out)"
    return Pool([candidates[t] for t in names], frozenset(held), list(opened.values()), sources, mixture, desc)


def _unique(name: str, taken: set[str]) -> str:
    label, n = name, 2
    while label in taken:
        label, n = f"{name}_{n}", n + 1
    taken.add(label)
    return label


def task_targets(pool: Pool, names: list[str]) -> list[Target]:
    """The named tasks as targets, looked up in the pool's collections (did-you-mean when unknown)."""
    targets = []
    for name in names:
        coll = next((c for c in pool.collections if not c.missing([name])), None)
        if coll is None:
            known = sorted({t for c in pool.collections for t in c.task_names()})
            raise ConfigError(f"unknown target task {name!r}", field="--target",
                              hint=suggest(name, known) or f"pick a task of {pool.description}")
        rows = [(i, x) for i, x in enumerate(coll.instances(name).column("input").to_pylist()) if x.strip()]
        if not rows:
            raise DataError(f"target task {name!r} has no instances with a non-empty input", path=coll.path,
                            field="--target", hint="pick another task, or describe it with --target-file FILE.jsonl")
        targets.append(Target(name, tuple(x for _, x in rows), tuple(i for i, _ in rows), task_group(coll, name),
                              coll.content_key(name), coll.info(name).category))
    return targets


def file_target(path: str | Path) -> Target:
    """A target described by a JSONL file of unlabeled inputs: one `{"input": "..."}` per line."""

    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("target file not found", path=path, field="--target-file",
                        hint='give a JSONL file with one {"input": "..."} per line') from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", path=path, field="--target-file") from None
    inputs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"line {number} is not JSON ({e})", path=path, field="--target-file",
                            hint='one {"input": "..."} object per line') from None
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise DataError(f'line {number} has no string "input"', path=path, field="--target-file",
                            hint='one {"input": "..."} object per line (outputs are not needed)')
        inputs.append(row["input"])
    if not inputs:
        raise DataError("the target file has no instances", path=path, field="--target-file",
                        hint='add lines like {"input": "an example input of your task"}')
    return Target(path.stem, tuple(inputs), tuple(range(len(inputs))), "target-" + content_hash(str(path.resolve())),
                  content_hash(*inputs))
