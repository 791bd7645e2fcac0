"""Instruction-sensitivity controls: eval settings that show whether a model reads the instructions.

Models often score about the same on simplified or misleading instructions (Kung & Peng, ACL 2023,
"Do Models Really Learn to Follow Instructions?"; Yin et al., ACL 2023, "Did You Read the
Instructions?"). Each control changes one thing in what the model is shown; the report puts each beside
the primary setting:

- `shuffled_definition`: each task is shown another evaluated task's definition (a seeded derangement of
  the evaluated tasks), no demonstrations (the `zero_shot` prompt shape).
- `delusive_pos2`: the definition and 2 positive examples (the `def_pos2` shape) whose outputs are
  replaced by other outputs of the task's label space (its label set when small, else other instances'
  outputs), seeded.
- `output_space_only`: for tasks with a small label set only (at most `max_labels` distinct outputs), the
  definition replaced by one sentence that lists the labels (the `zero_shot` shape).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mixtune.errors import ConfigError
from mixtune.eval.spec import CONTROL_SETTINGS
from mixtune.tasks.schema import Demonstration, TaskInfo

#: how many instances' outputs stand for a generation task's output space in `delusive_pos2`
OUTPUT_SAMPLE = 1000


def is_control(setting: str) -> bool:
    """True for the names in CONTROL_SETTINGS."""
    return setting in CONTROL_SETTINGS


def shape_of(setting: str) -> str:
    """The plain encoding setting a setting's prompt is written with (itself when not a control)."""
    return CONTROL_SETTINGS[setting][0] if setting in CONTROL_SETTINGS else setting


def output_space_sentence(labels: Sequence[str]) -> str:
    """The one-sentence definition of `output_space_only`."""
    return "Answer with one of the following: " + ", ".join(f'"{label}"' for label in labels) + "."


def derangement(items: Sequence[str], seed: int) -> dict[str, str]:
    """item -> another item, a seeded cyclic permutation (Sattolo's algorithm: no item maps to itself)."""
    order = list(items)
    rng = random.Random(f"shuffled_definition:{seed}")
    for i in range(len(order) - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    # Sattolo shuffles into a single cycle: position k's item is followed by the next position's
    return {items[k]: order[k] for k in range(len(items))} if len(items) > 1 else {}


def _output_space(collection: Any, task: str, max_labels: int) -> list[str]:
    from mixtune.eval.evalsets import label_set

    labels = label_set(collection, task, max_labels)
    if labels:
        return labels
    outputs = collection.instances(task).column("output").slice(0, OUTPUT_SAMPLE).to_pylist()
    return sorted({refs[0].strip() for refs in outputs if refs})


def _delude(collection: Any, info: TaskInfo, seed: int, max_labels: int) -> TaskInfo:
    space = _output_space(collection, info.name, max_labels)
    rng = random.Random(f"delusive_pos2:{seed}:{info.name}")
    demos = []
    for k, demo in enumerate(info.positive_examples):
        others = [o for o in space if o != demo.output.strip()]
        if k < 2 and others:
            demo = Demonstration(input=demo.input, output=rng.choice(others), explanation="")
        demos.append(demo)
    return replace(info, positive_examples=tuple(demos))


def control_infos(collection: Any, tasks: Sequence[str], setting: str, *, seed: int = 0,
                  max_labels: int = 10) -> dict[str, TaskInfo]:
    """task -> the TaskInfo the control `setting` shows for it. `output_space_only` keeps only the tasks
    with a small label set; the others keep every task."""
    infos = {t: collection.info(t) for t in tasks}
    if setting == "shuffled_definition":
        if len(tasks) < 2:
            raise ConfigError("shuffled_definition needs at least 2 evaluated tasks", field="eval.settings",
                              hint="evaluate more tasks, or drop the setting")
        donor = derangement(list(tasks), seed)
        return {t: replace(info, definition=infos[donor[t]].definition) for t, info in infos.items()}
    if setting == "delusive_pos2":
        return {t: _delude(collection, info, seed, max_labels) for t, info in infos.items()}
    if setting == "output_space_only":
        from mixtune.eval.evalsets import label_set

        chosen = {}
        for t, info in infos.items():
            labels = label_set(collection, t, max_labels)
            if labels:
                chosen[t] = replace(info, definition=output_space_sentence(labels))
        return chosen
    raise ValueError(f"{setting!r} is not a control setting ({', '.join(CONTROL_SETTINGS)})")
