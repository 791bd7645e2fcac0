"""The heuristic baselines of the SuperNI paper, written as predictions files.

- ``copy_demo``: predict the output of the task's first positive example, whatever the input.
- ``copy_input``: predict the instance's input unchanged.

They run over the same instances the model is evaluated on (`mixtune.eval.evalsets`): the split's test
tasks present in the collection (or the given tasks), the first `max_instances` instances of each task in
file order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mixtune.eval.evalsets import resolve_tasks
from mixtune.eval.predictions import prediction_record, write_predictions

log = logging.getLogger(__name__)

BASELINE_METHODS = ("copy_demo", "copy_input")


def baseline_prediction(method: str, info: Any, instance_input: str) -> str:
    """The baseline's prediction for one instance of the task described by `info` (a TaskInfo)."""
    if method == "copy_input":
        return instance_input
    if method == "copy_demo":
        return info.positive_examples[0].output if info.positive_examples else ""
    raise ValueError(f"unknown baseline method {method!r}; choose one of {', '.join(BASELINE_METHODS)}")


def iter_baseline_records(
    collection: Any,
    method: str,
    *,
    split: str = "default",
    max_instances: int | None = 100,
    tasks: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Official-format prediction records of a baseline over the evaluation instances."""
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {', '.join(BASELINE_METHODS)}")
    for task in resolve_tasks(collection, split, tasks):
        info = collection.info(task)
        if method == "copy_demo" and not info.positive_examples:
            log.warning("task %s has no positive example; copy_demo predicts an empty string", task)
        table = collection.instances(task)
        if max_instances is not None:
            table = table.slice(0, max_instances)
        for row in table.to_pylist():
            yield prediction_record(
                task,
                {"id": row["id"], "input": row["input"], "output": row["output"]},
                baseline_prediction(method, info, row["input"]),
                categories=info.categories,
            )


def write_baseline(
    collection: Any,
    method: str,
    out: str | Path,
    *,
    split: str = "default",
    max_instances: int | None = 100,
    tasks: Sequence[str] | None = None,
) -> int:
    """Write the baseline's predictions file (atomically); returns the number of records."""
    records = list(iter_baseline_records(collection, method, split=split, max_instances=max_instances, tasks=tasks))
    return write_predictions(out, records)
