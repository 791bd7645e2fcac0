"""Pick task names from a collection by name or glob, with "did you mean" for a misspelt name.

One rule for every place a user names tasks (a mixture's `tasks.include` / `exclude` / `weights`, an eval
YAML's `tasks`):

- a pattern containing `*`, `?` or `[` is a glob, matched with `fnmatch.fnmatchcase` against the whole task
  name: case-sensitive on every platform (task names are case-sensitive file names), no path semantics;
- any other pattern is an exact, case-sensitive task name;
- a glob that matches no task, or a name that is not a task, is a `TaskMatchError` (never silently empty).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mixtune.config import suggest
from mixtune.errors import ConfigError, DataError

GLOB_CHARS = frozenset("*?[")


class TaskMatchError(ConfigError, DataError):
    """A task name or glob matches no task of the collection.

    The user's file names tasks its collection does not have: it is both a config error (the YAML) and a
    data error (the collection), so callers that catch either keep catching it.
    """


def is_glob(pattern: str) -> bool:
    """True when `pattern` has glob characters (*, ?, [)."""
    return any(c in GLOB_CHARS for c in pattern)


def glob_tasks(pattern: str, names: Iterable[str]) -> list[str]:
    """The names that the glob `pattern` matches (case-sensitive, whole name), in the given order."""
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def match_task(pattern: str, candidates: Sequence[str], *, universe: Sequence[str] | None = None,
               path: str | Path | None = None, field: str | None = None, what: str = "task",
               not_candidate: str | None = None) -> list[str]:
    """The candidates that `pattern` (a task name or a glob) picks; raises TaskMatchError when none.

    `universe` is every task of the collection (default: the candidates): a misspelt name gets "did you
    mean" from it, and a name in the universe but not among the candidates is refused with
    `not_candidate` as the message's reason.
    """
    universe = candidates if universe is None else universe
    if is_glob(pattern):
        hits = glob_tasks(pattern, candidates)
        if not hits:
            raise TaskMatchError(f"{what} glob {pattern!r} matches no task", path=path, field=field,
                                 hint="check the pattern; `mixtune mixture show` lists the candidate tasks")
        return hits
    if pattern in set(candidates):
        return [pattern]
    if not_candidate is not None and pattern in set(universe):
        raise TaskMatchError(f"task {pattern!r} is {not_candidate}", path=path, field=field,
                             hint="remove `split` or the task name")
    raise TaskMatchError(f"unknown task {pattern!r}", path=path, field=field,
                         hint=suggest(pattern, universe) or "check the task name")


def match_tasks(patterns: Sequence[str], candidates: Sequence[str], *, universe: Sequence[str] | None = None,
                path: str | Path | None = None, field: str | None = None, what: str = "task",
                not_candidate: str | None = None, index_fields: bool = True) -> set[str]:
    """The union of what each pattern picks (`match_task`); every pattern must pick something.

    With `index_fields`, an error names the pattern's place (`field[j]`).
    """
    chosen: set[str] = set()
    for j, pattern in enumerate(patterns):
        where = f"{field}[{j}]" if field and index_fields else field
        chosen.update(match_task(pattern, candidates, universe=universe, path=path, field=where, what=what,
                                 not_candidate=not_candidate))
    return chosen


_SPLIT_FIX = "add splits/<name>/test_tasks.txt to the collection, or list the tasks explicitly (eval.tasks)"


def resolve_tasks(collection: Any, split: str = "default", tasks: Sequence[str] | None = None) -> list[str]:
    """The tasks to evaluate, in sorted order.

    `tasks` (names or globs, by the rule above) picks from the collection; without it, the
    split's test tasks present in the collection are used. An unknown name or a glob that matches nothing is
    a `TaskMatchError` (a DataError and a ConfigError).
    """
    names = collection.task_names()
    where = getattr(collection, "path", None)
    if tasks:
        return sorted(match_tasks(tasks, names, path=where, field="eval.tasks", index_fields=False))
    found = collection.split(split)
    if found is None:
        raise DataError(f"the collection has no split {split!r}", path=where, field="eval.split", hint=_SPLIT_FIX)
    present = set(names)
    chosen_list = sorted(t for t in found.test if t in present)
    if not chosen_list:
        raise DataError(f"none of split {split!r}'s test tasks is in the collection", path=where,
                        field="eval.split", hint=_SPLIT_FIX)
    return chosen_list
