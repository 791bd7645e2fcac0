"""Predictions files in the official SuperNI format: one JSON object per line.

Each line: ``{"Task": str, "Instance": {"id"?: str, "input": str, "output": [str, ...]}, "prediction": str}``
(``Prediction`` is accepted too, as the official scoring script reads it), optionally ``Categories``
(list of str) and any other fields (``Definition``, ...), which are kept and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixtune.config import suggest
from mixtune.errors import DataError
from mixtune.io import atomic_write_text
from mixtune.limits import json_loads

FORMAT_HINT = 'each line must look like {"Task": ..., "Instance": {"input": ..., "output": [...]}, "prediction": ...}'


def resolve_collection(collection: Any, type: str | None = None) -> Any:
    """A TaskCollection from an object, a path or "bundled" (None stays None).

    `type` (superni | hf | jsonl) defaults to jsonl for a .jsonl/.json file, else superni.
    """
    if collection is None or not isinstance(collection, (str, Path)):
        return collection
    from mixtune.tasks import open_collection

    text = str(collection)
    if type is None:
        type = "jsonl" if text.endswith((".jsonl", ".json")) and Path(text).is_file() else "superni"
    return open_collection(type=type, path=text)


def task_categories(collection: Any, tasks: Iterable[str]) -> dict[str, str]:
    """task -> category (its first `Categories` entry) for the given tasks, from the collection."""
    return {t: collection.info(t).category for t in sorted(set(tasks))}


def _fail(path: Path, line: int, message: str, field: str | None = None, hint: str | None = FORMAT_HINT) -> DataError:
    return DataError(f"line {line}: {message}", path=path, field=field, hint=hint)


def _check_record(obj: Any, path: Path, line: int, known: frozenset[str] | None, collection: Any) -> dict:
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {type(obj).__name__}")
    task = obj.get("Task")
    if task is None:
        raise _fail(path, line, "missing field", field="Task")
    if not isinstance(task, str) or not task:
        raise _fail(path, line, f"must be a non-empty string, got {task!r}", field="Task")
    inst = obj.get("Instance")
    if inst is None:
        raise _fail(path, line, "missing field", field="Instance")
    if not isinstance(inst, dict):
        raise _fail(path, line, f"must be an object, got {type(inst).__name__}", field="Instance")
    if "input" not in inst:
        raise _fail(path, line, "missing field", field="Instance.input")
    if not isinstance(inst["input"], str):
        raise _fail(path, line, f"must be a string, got {type(inst['input']).__name__}", field="Instance.input")
    if "output" not in inst:
        raise _fail(path, line, "missing field", field="Instance.output")
    out = inst["output"]
    if not isinstance(out, list) or not out or not all(isinstance(o, str) for o in out):
        raise _fail(path, line, f"must be a non-empty list of strings (the references), got {_short(out)}",
                    field="Instance.output")
    if "prediction" in obj:
        key = "prediction"
    elif "Prediction" in obj:
        key = "Prediction"
    else:
        raise _fail(path, line, "missing field (also accepted: 'Prediction')", field="prediction")
    if not isinstance(obj[key], str):
        raise _fail(path, line, f"must be a string, got {_short(obj[key])}", field=key,
                    hint="write an empty string for a missing prediction")
    cats = obj.get("Categories")
    if cats is not None and (not isinstance(cats, list) or not all(isinstance(c, str) for c in cats)):
        raise _fail(path, line, f"must be a list of strings, got {_short(cats)}", field="Categories")
    if known is not None and task not in known:
        name = getattr(collection, "name", None) or getattr(collection, "path", "the collection")
        hint = suggest(task, known) or "score with the collection the predictions were made on"
        raise DataError(f"line {line}: unknown task {task!r}: not in collection {name!r}", path=path,
                        field="Task", hint=hint)
    if key != "prediction":
        obj["prediction"] = obj[key]
    return obj


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_predictions(path: str | Path, *, collection: Any = None) -> list[dict[str, Any]]:
    """Read and check a predictions JSONL file; errors name the file, the line number and the field.

    With a `collection`, every `Task` must be one of its tasks. Blank lines are skipped. Each returned
    record has a `prediction` key (copied from `Prediction` when that is the spelling used).
    """
    return [record for _, record in read_prediction_lines(path, collection=collection)]


def read_prediction_lines(path: str | Path, *, collection: Any = None) -> list[tuple[int, dict[str, Any]]]:
    """`read_predictions` with each record's line number: [(line, record), ...]."""
    path = Path(path)
    known = frozenset(collection.task_names()) if collection is not None else None
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("predictions file not found", path=path, hint="check the path") from None
    except IsADirectoryError:
        raise DataError("is a folder, expected a predictions .jsonl file", path=path) from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json_loads(text)
                except json.JSONDecodeError as e:
                    raise _fail(path, number, f"invalid JSON ({e.msg} at column {e.colno})",
                                hint="one JSON object per line (JSON Lines)") from None
                records.append((number, _check_record(obj, path, number, known, collection)))
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e.reason})", path=path) from None
    if not records:
        raise DataError("no predictions in file", path=path, hint=FORMAT_HINT)
    return records


def refuse_duplicates(lines: list[tuple[int, dict[str, Any]]], path: str | Path) -> None:
    """A DataError naming the line when two lines predict the same (task, instance id)."""
    seen: dict[tuple[str, str], int] = {}
    for number, record in lines:
        if record["Instance"].get("id") is None:
            continue
        key = (record["Task"], str(record["Instance"]["id"]))
        if key in seen:
            raise _fail(Path(path), number, f"duplicate instance id {key[1]!r} of task {key[0]!r} (first on line "
                        f"{seen[key]})", field="Instance.id", hint="keep one prediction per instance")
        seen[key] = number


def align_to_collection(lines: list[tuple[int, dict[str, Any]]], path: str | Path, collection: Any, *,
                        split: str = "default", tasks: Sequence[str] | None = None,
                        max_instances: int | None = 100) -> tuple[list[dict[str, Any]], int]:
    """The collection's evaluated instances (`evalsets.eval_instances`: the same set `eval run` evaluates),
    each with the file's prediction for it, or "" when the file has none, as the official SuperNI script
    scores a missing prediction. References and categories come from the collection, never from the file.

    Returns (records in evaluation order, number of missing predictions). A line whose (task, instance id)
    is not an evaluated instance, or repeats one, is a DataError naming the line.
    """
    from mixtune.eval.evalsets import eval_instances

    path = Path(path)
    evaluated = eval_instances(collection, split, max_instances, tasks)
    keys = {(task, str(inst["id"])) for task, inst in evaluated}
    evaluated_tasks = {task for task, _ in evaluated}
    chosen = f"the first {max_instances} instances" if max_instances is not None else "all instances"
    where = f"tasks {', '.join(tasks)}" if tasks else f"split {split!r}'s test tasks"
    refuse_duplicates(lines, path)
    found: dict[tuple[str, str], str] = {}
    for number, record in lines:
        task, iid = record["Task"], record["Instance"].get("id")
        if iid is None:
            raise _fail(path, number, "no instance id: with a collection, predictions are matched to its "
                        "instances by (Task, Instance.id)", field="Instance.id",
                        hint="write each instance's id (eval run and eval baseline do), or score without --collection")
        if task not in evaluated_tasks:
            raise _fail(path, number, f"task {task!r} is not evaluated ({where})", field="Task",
                        hint="score with the --split / --tasks the predictions were made for")
        if (task, str(iid)) not in keys:
            raise _fail(path, number, f"unknown instance id {iid!r} of task {task!r}: not among {chosen} of "
                        f"the task in the collection", field="Instance.id",
                        hint="score with the --max-instances the predictions were made for")
        found[(task, str(iid))] = record["prediction"]
    records = []
    for task, inst in evaluated:
        info = collection.info(task)
        records.append(prediction_record(task, inst, found.get((task, str(inst["id"])), ""),
                                         categories=info.categories))
    return records, len(evaluated) - len(found)


def prediction_record(
    task: str,
    instance: Mapping[str, Any],
    prediction: str,
    *,
    categories: Iterable[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One line of a predictions file in the official layout."""
    record: dict[str, Any] = {"Task": task}
    if categories is not None:
        record["Categories"] = list(categories)
    record.update(extra)
    record["Instance"] = {k: (list(v) if k == "output" else v) for k, v in instance.items()}
    record["prediction"] = prediction
    return record


def write_predictions(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records as a predictions JSONL atomically (UTF-8, one object per line); returns the count."""
    lines = [json.dumps(dict(r), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
