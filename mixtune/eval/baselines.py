"""The heuristic baselines of the SuperNI paper, written as predictions files.

- ``copy_demo``: predict the output of the task's first positive example, whatever the input.
- ``copy_input``: predict the instance's input unchanged.
- ``random_label``: the random-guess control of Kung & Peng (2023): for a task with a small label set (at
  most `max_labels` distinct outputs, `evalsets.label_set`), a uniform choice among its labels, seeded by
  (seed, task, instance id); other tasks as ``copy_input``.

They run over the same instances the model is evaluated on (`mixtune.eval.evalsets`): the split's test
tasks present in the collection (or the given tasks), the first `max_instances` instances of each task in
file order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mixtune.eval.evalsets import first_instances, label_set
from mixtune.eval.predictions import prediction_record, write_predictions
from mixtune.tasks.matching import resolve_tasks

log = logging.getLogger(__name__)

BASELINE_METHODS = ("copy_demo", "copy_input", "random_label")
#: what random_label does, in the words of the report
RANDOM_LABEL_TEXT = ("a seeded uniform guess among each task's labels where the task has a small label set, the "
                     "input copied elsewhere")


def baseline_prediction(method: str, info: Any, instance_input: str, *, labels: Sequence[str] | None = None,
                        key: str = "") -> str:
    """The baseline's prediction for one instance of the task described by `info` (a TaskInfo).

    `random_label` draws from `labels` (the task's label set, None when it has none) with `key` (seed,
    task and instance id) as the seed of the draw."""
    if method == "copy_input" or (method == "random_label" and not labels):
        return instance_input
    if method == "random_label":
        return random.Random(key).choice(list(labels or ()))
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
    seed: int = 0,
    max_labels: int = 10,
) -> Iterator[dict[str, Any]]:
    """Official-format prediction records of a baseline over the evaluation instances."""
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {', '.join(BASELINE_METHODS)}")
    for task in resolve_tasks(collection, split, tasks):
        info = collection.info(task)
        if method == "copy_demo" and not info.positive_examples:
            log.warning("task %s has no positive example; copy_demo predicts an empty string", task)
        labels = label_set(collection, task, max_labels) if method == "random_label" else None
        for inst in first_instances(collection, task, max_instances):
            yield prediction_record(
                task, inst,
                baseline_prediction(method, info, inst["input"], labels=labels, key=f"{seed}:{task}:{inst['id']}"),
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
    seed: int = 0,
    max_labels: int = 10,
) -> int:
    """Write the baseline's predictions file (atomically); returns the number of records."""
    records = list(iter_baseline_records(collection, method, split=split, max_instances=max_instances, tasks=tasks,
                                         seed=seed, max_labels=max_labels))
    return write_predictions(out, records)
