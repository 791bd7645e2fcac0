"""Train/eval decontamination: find training instances whose input overlaps an evaluation instance.

The jobs live in their own modules: the exact / n-gram test in `mixtune.mixtures.ngram_overlap`, the
evaluation side in `mixtune.mixtures.eval_items`, the report and its printing in
`mixtune.mixtures.decontamination_report`, the `mixture decontaminate` command in `mixtune.mixtures.cli`.
This module checks a plan's tasks and derives the plan without the contaminated instances.

`--drop` builds the mixture without the contaminated instances at the same size
(`MixturePlan.without_instances`): each example that drew one is re-drawn from the clean instances of the
same task's pool (seeded), so every task keeps its count, and every other example keeps its position and
content. Only a task whose whole pool is contaminated loses its examples.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from mixtune.errors import DataError
from mixtune.mixtures.decontamination_report import DecontaminationReport, TaskCount
from mixtune.mixtures.eval_items import spec_eval_items, split_eval_items
from mixtune.mixtures.ngram_overlap import DEFAULT_NGRAM, EvalIndex, Overlap, build_eval_index, find_overlaps

_REDRAW = 0x726564726177  # stream tag of the re-drawn rows


def check_tasks(index: EvalIndex, train_tasks: Iterable[tuple[str, str, Any]]) -> DecontaminationReport:
    """Check training tasks given as (source, task, collection) against the evaluation index."""
    counts: list[TaskCount] = []
    overlaps: list[Overlap] = []
    for source, task, collection in train_tasks:
        table = collection.instances(task)
        ids = table.column("id").to_pylist()
        inputs = table.column("input").to_pylist()
        found = find_overlaps(index, source, task, ids, inputs)
        counts.append(TaskCount(source, task, len(ids), exact=sum(o.kind == "exact" for o in found),
                                ngram=sum(o.kind == "ngram" for o in found)))
        overlaps.extend(found)
    return DecontaminationReport(index.n, index.tasks, len(index), counts, overlaps)


def decontaminate_plan(plan: Any, *, eval_split: str = "default", eval_spec: Any = None,
                       ngram: int = DEFAULT_NGRAM) -> DecontaminationReport:
    """Check every instance of the plan's training tasks against the evaluation's instances.

    The evaluation is `eval_spec` (an EvalSpec: its tasks' first N instances) or, without it, every
    instance of the tasks that `eval_split` holds out in the plan's collections. Every instance of a
    training task is checked, not only its capped pool; `sampled_examples` counts the mixture's
    examples that are contaminated.
    """
    items = spec_eval_items(eval_spec) if eval_spec is not None else split_eval_items(plan.collections, eval_split)
    index = build_eval_index(items, ngram)
    if not len(index):
        raise DataError("the evaluation side has no instances", field="eval",
                        hint="check the split's test_tasks.txt or the eval YAML's tasks")
    report = check_tasks(index, [(t.source, t.name, t.collection) for t in plan.tasks])
    drop = contaminated_positions(plan, report)
    sampled = np.bincount(plan.index.task_ids[drop], minlength=len(plan.tasks)) if len(plan.tasks) else []
    for count, n in zip(report.tasks, np.asarray(sampled).tolist(), strict=True):
        count.sampled_examples = int(n)
    return report


def contaminated_instances(report: DecontaminationReport) -> dict[tuple[str, str], list[int]]:
    """(source, task) -> the rows of its contaminated instances."""
    bad: dict[tuple[str, str], list[int]] = {}
    for o in report.overlaps:
        bad.setdefault((o.source, o.task), []).append(o.row)
    return bad


def contaminated_positions(plan: Any, report: DecontaminationReport) -> np.ndarray:
    """Boolean mask over the plan's positions: True where the example's instance is contaminated."""
    bad = contaminated_instances(report)
    drop = np.zeros(len(plan), dtype=bool)
    for k, task in enumerate(plan.tasks):
        rows = bad.get((task.source, task.name))
        if rows:
            drop |= (plan.index.task_ids == k) & np.isin(plan.index.rows, rows)
    return drop


def decontaminated(plan: Any, report: DecontaminationReport) -> Any:
    """The plan without its contaminated instances, for `build_mixture` (see the module doc).

    Its `redrawn` counts the examples re-drawn from clean instances of their task, `dropped` those of
    tasks with no clean instance left; its hash covers the contaminated instances, and its summary a
    `decontamination` section.
    """
    keys = "\n".join("\0".join(k) for k in sorted(report.contaminated_keys()))
    clean = plan.without_instances(contaminated_instances(report), stream=_REDRAW,
                                   tag=f"{report.ngram}\n{keys}", mark="d")
    clean.notes["decontamination"] = {
        "ngram": report.ngram,
        "eval_tasks": report.eval_tasks,
        "dropped_instances": report.num_contaminated,
        "replaced_examples": clean.redrawn,
        "dropped_examples": clean.dropped,
        "source_hash": plan.hash,
    }
    return clean
