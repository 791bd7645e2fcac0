"""The evaluation side of decontamination: (task, instance id, input) of every instance evaluated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mixtune.errors import DataError


def split_eval_items(collections: dict[str, Any], split: str) -> Iterator[tuple[str, str, str]]:
    """Every instance of the tasks that `split` holds out (test + excluded), in each collection."""
    seen: set[str] = set()
    any_split = False
    for collection in collections.values():
        found = collection.split(split)
        if found is None:
            continue
        any_split = True
        present = set(collection.task_names())
        for task in sorted(found.held_out & present - seen):
            seen.add(task)
            yield from _task_items(collection, task, None)
    if not any_split:
        raise DataError(f"no source collection of the mixture has a split {split!r}", field="eval-split",
                        hint="give the evaluation with --eval EVAL.yaml, or a collection with splits/<name>/")


def spec_eval_items(spec: Any) -> Iterator[tuple[str, str, str]]:
    """The instances an eval spec evaluates: its tasks' first `max_instances_per_task` instances."""
    from mixtune.tasks.collection import open_collection
    from mixtune.tasks.matching import resolve_tasks

    collection = open_collection(spec.type, spec.collection)
    for task in resolve_tasks(collection, spec.split, spec.tasks):
        yield from _task_items(collection, task, spec.max_instances_per_task)


def _task_items(collection: Any, task: str, limit: int | None) -> Iterator[tuple[str, str, str]]:
    table = collection.instances(task)
    if limit is not None:
        table = table.slice(0, limit)
    for instance_id, text in zip(table.column("id").to_pylist(), table.column("input").to_pylist(), strict=True):
        yield task, str(instance_id), text
