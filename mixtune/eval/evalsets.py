"""Evaluation sets: the held-out tasks' first N instances, encoded per setting, all references kept.

A record is the official SuperNI prediction line without its prediction:
`{"Task", "Categories", "Definition", "Instance": {"id", "input", "output": [...]}, "prompt", "setting"}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mixtune.tasks.matching import resolve_tasks


def first_instances(collection: Any, task: str, max_instances: int | None) -> list[dict[str, Any]]:
    """The first `max_instances` (None: all) instances of `task` in file order, as {"id", "input", "output"}."""
    table = collection.instances(task)
    rows = (table if max_instances is None else table.slice(0, max_instances)).to_pylist()
    return [{"id": str(r["id"]), "input": r["input"], "output": list(r["output"])} for r in rows]


def eval_instances(collection: Any, split: str = "default", max_instances: int | None = 100,
                   tasks: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(task, instance) of every evaluated instance: the split's test tasks (or `tasks`) in sorted order, the
    first `max_instances` instances of each in file order. `eval run`, `eval baseline` and `eval score
    --collection` all evaluate exactly this set."""
    return [(task, inst) for task in resolve_tasks(collection, split, tasks)
            for inst in first_instances(collection, task, max_instances)]


def build_eval_set(collection: Any, split: str = "default", max_instances: int | None = 100,
                   setting: str = "def_pos2", *, tasks: Sequence[str] | None = None, tokenizer: Any = None,
                   max_source_length: int | None = None, chat: bool = False,
                   instances: Sequence[tuple[str, dict[str, Any]]] | None = None, seed: int = 0,
                   max_labels: int = 10) -> list[dict[str, Any]]:
    """The evaluation records of one setting, task by task in sorted order, instances in file order.

    `instances` ((task, instance) pairs) replaces the split's evaluated instances (e.g. the unseen instances
    of training tasks). A control setting (`mixtune.eval.controls`) writes each task's changed header with
    its prompt shape; `output_space_only` keeps only the tasks with a small label set (`max_labels`).
    With `tokenizer` and `max_source_length`, prompts are fitted to the budget as Tk-Instruct does
    (demonstrations dropped, then cut, as text); evaluation leaves them whole and lets generation cut
    them in token space (`mixtune.tokenization.source_ids`) as training does. With `chat`, each prompt is
    the tokenizer's chat rendering of the user turn plus the generation prompt.
    """
    from mixtune.encodings import encode_prompt, encoding_for_setting, render_chat
    from mixtune.eval.controls import control_infos, is_control, shape_of

    if instances is None:
        instances = eval_instances(collection, split, max_instances, tasks)
    names = sorted({task for task, _ in instances})
    if is_control(setting):
        infos = control_infos(collection, names, setting, seed=seed, max_labels=max_labels)
    else:
        infos = {t: collection.info(t) for t in names}
    encoding = encoding_for_setting(shape_of(setting))
    records: list[dict[str, Any]] = []
    for task, inst in instances:
        info = infos.get(task)
        if info is None:
            continue
        prompt = encode_prompt(info, inst["input"], encoding, tokenizer=tokenizer, max_source_length=max_source_length)
        if chat:
            prompt, _ = render_chat(tokenizer, prompt)
        records.append({
            "Task": task,
            "Categories": list(info.categories),
            "Definition": [info.definition],
            "Instance": inst,
            "prompt": prompt,
            "setting": setting,
        })
    return records


def label_set(collection: Any, task: str, max_labels: int = 10) -> list[str] | None:
    """The task's distinct outputs (all instances' references and its positive examples), sorted,
    or None when there are more than `max_labels` (then the task is not a classification task)."""
    labels: set[str] = {d.output.strip() for d in collection.info(task).positive_examples}
    column = collection.instances(task).column("output")
    for chunk in column.chunks:
        for outputs in chunk.to_pylist():
            labels.update(o.strip() for o in outputs)
            if len(labels) > max_labels:
                return None
    return sorted(labels) if 0 < len(labels) <= max_labels else None


def chance_exact_match(collection: Any, categories: dict[str, str], max_labels: int = 10) -> dict[str, float]:
    """category -> the EM a uniform guess among each task's labels expects (100 / number of labels), averaged
    over the category's tasks that have a label set; only categories whose primary metric is EM."""
    from mixtune.eval.metrics import primary_metric

    per_category: dict[str, list[float]] = {}
    for task, category in categories.items():
        if primary_metric(category) != "exact_match":
            continue
        labels = label_set(collection, task, max_labels)
        if labels:
            per_category.setdefault(category, []).append(100.0 / len(labels))
    return {c: round(sum(v) / len(v), 2) for c, v in per_category.items()}
