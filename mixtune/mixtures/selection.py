"""Resolve a mixture spec against its collections: which tasks each source takes, and what is held out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixtune.config import suggest
from mixtune.encodings import EncodingSpec
from mixtune.errors import ConfigError
from mixtune.mixtures.spec import MixtureSpec, SourceSpec
from mixtune.tasks.matching import glob_tasks, is_glob, match_tasks
from mixtune.tasks.schema import TaskCollection, TaskInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectedTask:
    """A task taken by one source of one mixture file."""

    task: str
    info: TaskInfo
    weight: float  # explicit task weight × source weight
    encoding: EncodingSpec


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    """Log an INFO line once per process (sources and nested mixtures repeat the same finding)."""
    if message not in _SAID:
        _SAID.add(message)
        log.info("%s", message)


def _match(patterns: Sequence[str], candidates: Sequence[str], universe: Sequence[str], *, path: Path | None,
           field: str, what: str) -> set[str]:
    """Names among `candidates` matched by the patterns; each pattern must match something."""
    return match_tasks(patterns, candidates, universe=universe, path=path, field=field, what=what,
                       not_candidate="not a candidate of this source (not in the split's train tasks)")


def _check_values(values: Sequence[str], known: set[str], *, path: Path | None, field: str, what: str) -> None:
    for j, value in enumerate(values):
        if value not in known:
            raise ConfigError(f"no task of this source has {what} {value!r}", path=path, field=f"{field}[{j}]",
                              hint=suggest(value, sorted(known)) or f"known: {', '.join(sorted(known)[:8])}")


def select_tasks(spec: MixtureSpec, index: int, collection: TaskCollection) -> list[SelectedTask]:
    """The tasks that `spec.sources[index]` takes from `collection`, in name order."""
    source: SourceSpec = spec.sources[index]
    path = spec.path
    field = f"sources[{index}]"
    universe = collection.task_names()
    present = set(universe)
    if source.split is not None:
        split = collection.split(source.split)
        if split is None:
            raise ConfigError(f"collection {source.path!r} has no split {source.split!r}", path=path,
                              field=f"{field}.split", hint="expected splits/<split>/train_tasks.txt")
        missing = [t for t in split.train if t not in present]
        if missing and source.missing_tasks == "error":
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ConfigError(f"split {source.split!r} names {len(missing)} train task(s) the collection lacks: "
                              f"{shown}", path=path, field=f"{field}.missing_tasks",
                              hint="set `missing_tasks: skip` to leave them out")
        if missing:
            _say_once(f"{path or 'inline mixture'}: skipping {len(missing)} train task(s) "
                      f"of split {source.split!r} that collection {source.path!r} lacks (missing_tasks: skip)")
        candidates = sorted({t for t in split.train if t in present})
    else:
        candidates = list(universe)
    sel = source.tasks
    chosen = (_match(sel.include, candidates, universe, path=path, field=f"{field}.tasks.include", what="include")
              if sel.include else set(candidates))
    if sel.exclude:
        chosen -= _match(sel.exclude, universe, universe, path=path, field=f"{field}.tasks.exclude",
                         what="exclude")
    infos = {t: collection.info(t) for t in sorted(chosen)}
    filters: list[tuple[list[str], str, str, Callable[[TaskInfo], tuple[str, ...]]]] = [
        (sel.categories, "categories", "category", lambda i: i.categories),
        (sel.languages, "languages", "input language", lambda i: i.input_language),
        (sel.output_languages, "output_languages", "output language", lambda i: i.output_language),
    ]
    for wanted, key, what, get in filters:
        if not wanted:
            continue
        known = {v for i in infos.values() for v in get(i)}
        _check_values(wanted, known, path=path, field=f"{field}.tasks.{key}", what=what)
        infos = {t: i for t, i in infos.items() if set(get(i)) & set(wanted)}
    if not infos:
        raise ConfigError(f"source {source.name!r} selects no task", path=path, field=f"{field}.tasks",
                          hint="loosen include / categories / languages")
    weights = dict.fromkeys(infos, 1.0)
    for pattern, w in sel.weights.items():
        hits = glob_tasks(pattern, infos) if is_glob(pattern) else [pattern] if pattern in infos else []
        if not hits:
            raise ConfigError(f"weight for {pattern!r}, which is not a selected task", path=path,
                              field=f"{field}.tasks.weights.{pattern}",
                              hint=suggest(pattern, list(infos)) or "weights apply to selected tasks only")
        for t in hits:
            weights[t] *= w
    return [SelectedTask(task=t, info=i, weight=weights[t] * source.weight, encoding=source.encoding)
            for t, i in infos.items()]


def held_out_tasks(spec: MixtureSpec, collections: dict[int, TaskCollection]) -> frozenset[str]:
    """Task names held out by `spec` (own sources only): the split's test + excluded, plus `held_out.tasks`.

    `collections` maps a source index to its opened collection.
    """
    names: set[str] = set(spec.held_out.tasks)
    for i, source in enumerate(spec.sources):
        name = spec.held_out.split or source.split or "default"
        split = collections[i].split(name)
        if split is None:
            if spec.held_out.split is not None:
                raise ConfigError(f"collection {source.path!r} has no split {name!r} to hold out", path=spec.path,
                                  field="held_out.split", hint="expected splits/<split>/test_tasks.txt")
            continue
        names |= split.held_out
    return frozenset(names)
