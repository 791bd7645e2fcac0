"""Staged mixtures (curricula): the stages of a mixture take consecutive ranges of positions, in order.

Stage k is planned as a mixture of its own (its sources, nested mixtures, temperature and cap) and
sampled with the sampler's stratified order over its own range: `examples` positions, or
`round(fraction × total)` (the last stage takes what the rounding leaves). Its sample order is
seeded by (seed, k), so the example at a position stays a pure function of (mixture, seed,
position), and the stage boundaries are fixed positions: resuming inside any stage starts the
stream at the saved position like any other mixture. A task that several stages take is one task of
the plan (same source, name and cap); its rate is its share of the whole plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixtune.mixtures.sampler import SampleIndex, build_index, stable_key

_STAGE = 0x7374616765  # stream tag of the stages' sample orders


@dataclass(frozen=True)
class Stage:
    """Positions [start, stop) of the plan belong to this stage, which draws from `tasks` (plan indices)."""

    name: str
    start: int
    stop: int
    tasks: tuple[int, ...]


def stage_lengths(spec: Any, total: int | None) -> list[int]:
    """The number of examples of each stage of `spec` (a MixtureSpec with `stages`)."""
    if spec.stages[0].examples is not None:
        return [int(st.examples) for st in spec.stages]
    assert total is not None
    lengths = [int(round(st.fraction * total)) for st in spec.stages[:-1]]
    return [*lengths, max(total - sum(lengths), 0)]


def plan_stages(spec: Any, stage_tasks: list[tuple[list[Any], np.ndarray]], total: int | None,
                ) -> tuple[list[Any], SampleIndex, list[Stage]]:
    """Merge the stages' (tasks, rates) into one task list and one sample index, stage after stage.

    Returns the plan's tasks (their `rate` set to the share of the whole plan), the index and the stages.
    """
    tasks: list[Any] = []
    where: dict[tuple[str, str, int | None], int] = {}
    lengths = stage_lengths(spec, total)
    ids, rows, stages = [], [], []
    start = 0
    for k, ((own, rates), n) in enumerate(zip(stage_tasks, lengths, strict=True)):
        mapping = []
        for t in own:
            key = (t.source, t.name, t.cap)
            if key not in where:
                where[key] = len(tasks)
                tasks.append(t)
                t.rate = 0.0
            mapping.append(where[key])
        index = build_index(rates, [t.pool for t in own], n, spec.seed ^ (_STAGE + k),
                            [stable_key(f"{t.source}\0{t.name}") for t in own])
        ids.append(np.asarray(mapping, dtype=np.int64)[index.task_ids])
        rows.append(index.rows)
        for t, r in zip(own, rates.tolist(), strict=True):
            tasks[where[(t.source, t.name, t.cap)]].rate += r * n
        stages.append(Stage(f"stage{k + 1}", start, start + n, tuple(sorted(set(mapping)))))
        start += n
    for t in tasks:
        t.rate /= max(start, 1)
    task_dtype = np.int32 if len(tasks) < 2**31 else np.int64
    index = SampleIndex(task_ids=np.concatenate(ids).astype(task_dtype), rows=np.concatenate(rows))
    return tasks, index, stages
