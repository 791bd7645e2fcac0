"""Validate a task's header and instances and turn them into the cache's header dict + columns.

One place checks what every collection type must satisfy: a definition that is text, demonstrations
with `input`/`output` text, and instances whose `input` is text and whose `output` is a non-empty
list of strings. Each problem is a DataError naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mixtune.errors import DataError
from mixtune.limits import json_loads
from mixtune.tasks.schema import INSTANCE_SCHEMA

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
TASK_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
HEADER_FIELDS = ("definition", "positive_examples", "negative_examples", "categories", "input_language",
                 "output_language", "instruction_language")
# SuperNI file keys -> header keys.
SUPERNI_FIELDS = {"Definition": "definition", "Positive Examples": "positive_examples",
                  "Negative Examples": "negative_examples", "Categories": "categories",
                  "Input_language": "input_language", "Output_language": "output_language",
                  "Instruction_language": "instruction_language"}


def check_task_name(name: str, *, path: str | Path | None = None, field: str | None = None) -> str:
    """Return `name` when it is a plain task name (letters, digits, `_ . -`; no path parts)."""
    if not TASK_NAME.fullmatch(name) or name in (".", ".."):
        raise DataError(f"{name!r} is not a plain task name", path=path, field=field,
                        hint="task names use only letters, digits, '_', '.', '-', do not start with '.' "
                             "and contain no '/' or other path parts")
    return name


def parse_json(data: bytes, path: str | Path) -> Any:
    """json.loads with a DataError naming file, line and column on malformed input."""
    try:
        obj = json_loads(data)
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path,
                        hint="save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", path=path,
                        hint="fix the JSON syntax there (a missing comma, quote or bracket?)") from None
    if has_lone_surrogate(data, obj):
        raise DataError("the JSON holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                        "text", path=path, hint="fix or remove the broken \\u escape")
    return obj


def has_lone_surrogate(data: bytes, obj: Any) -> bool:
    """Whether JSON text `data` (parsed as `obj`) holds a lone \\ud800-style escape: paired ones are fine,
    a lone one decodes to something that is not text (Arrow and UTF-8 writers reject it)."""
    if not _SURROGATE_ESCAPE.search(data):
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def text_list(value: Any, *, path: str | Path, field: str) -> list[str]:
    """A string or a list of strings, as a list (None -> [])."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataError(f"expected a string or a list of strings, got {_short(value)}", path=path, field=field)


def definition_text(value: Any, *, path: str | Path, field: str) -> str:
    """The task definition: a string, or the first entry of a list of strings (SuperNI style)."""
    items = text_list(value, path=path, field=field)
    if not items:
        raise DataError("the definition is empty", path=path, field=field,
                        hint="write the task's instruction as a string or a one-element list")
    return items[0]


def demonstrations(value: Any, *, path: str | Path, field: str) -> list[dict[str, str]]:
    """Positive/negative examples: a list of {input, output, explanation?} with text values."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"expected a list of examples, got {_short(value)}", path=path, field=field)
    out = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"expected an object with 'input' and 'output', got {_short(item)}",
                            path=path, field=where)
        demo = {}
        for key in ("input", "output", "explanation"):
            v = item.get(key, "" if key == "explanation" else None)
            if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
                v = v[0]
            if not isinstance(v, str):
                raise DataError(f"'{key}' must be a string, got {_short(v)}", path=path, field=f"{where}.{key}",
                                hint="each example needs text 'input' and 'output' (and optional 'explanation')")
            demo[key] = v
        out.append(demo)
    return out


def header_from(fields: dict[str, Any], *, path: str | Path, require_definition: bool,
                names: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate header fields (keys as in `names`: file key -> header key) into the cache header dict."""
    names = names or {k: k for k in HEADER_FIELDS}
    header: dict[str, Any] = {}
    for file_key, key in names.items():
        value = fields.get(file_key)
        if key == "definition":
            if value is None:
                if require_definition:
                    raise DataError(f"the task has no '{file_key}'", path=path, field=file_key,
                                    hint="add the task's instruction as a string or a one-element list")
                header[key] = ""
            else:
                header[key] = definition_text(value, path=path, field=file_key)
        elif key.endswith("_examples"):
            header[key] = demonstrations(value, path=path, field=file_key)
        else:
            header[key] = text_list(value, path=path, field=file_key)
    return header


def instance_columns(instances: Any, *, task: str, path: str | Path, field: str = "Instances",
                     line_numbers: list[int] | None = None, allow_string_output: bool = False,
                     ) -> tuple[list[str], list[str], list[list[str]]]:
    """Validate a list of instance dicts into (ids, inputs, outputs) columns.

    `output` must be a non-empty list of strings (or, with `allow_string_output`, one string).
    """
    if not isinstance(instances, list):
        raise DataError(f"expected a list of instances, got {_short(instances)}", path=path, field=field)
    if not instances:
        raise DataError("the task has no instances", path=path, field=field,
                        hint="add at least one {\"input\": ..., \"output\": [...]} instance or remove the task")
    ids: list[str] = []
    inputs: list[str] = []
    outputs: list[list[str]] = []
    for i, inst in enumerate(instances):
        if (not isinstance(inst, dict) or not isinstance(inst.get("input"), str)
                or not isinstance(inst.get("id") or "", str)):
            _bad_instance(inst, i, task=task, path=path, field=field, line_numbers=line_numbers)
        out = inst.get("output")
        if allow_string_output and isinstance(out, str):
            out = [out]
        elif not (isinstance(out, list) and out and all(isinstance(o, str) for o in out)):
            _bad_instance(inst, i, task=task, path=path, field=field, line_numbers=line_numbers)
        ids.append(inst["id"] if inst.get("id") is not None else f"{task}-{i}")
        inputs.append(inst["input"])
        outputs.append(out)
    return ids, inputs, outputs


def instance_table(instances: Any, *, task: str, path: str | Path, field: str = "Instances") -> pa.Table:
    """Validate SuperNI instances into an INSTANCE_SCHEMA table.

    Arrow converts the list of dicts in C++; only when that conversion fails or finds a null, an empty
    output list or a non-list output does the per-instance check run, to name the bad instance.
    """
    if (isinstance(instances, list) and instances
            and all(type(i) is dict and type(i.get("output")) is list for i in instances)):
        try:
            array = pa.array(instances, type=pa.struct(list(INSTANCE_SCHEMA)))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            array = None
        if array is not None:
            ids, inputs, outputs = array.flatten()
            lengths = pc.list_value_length(outputs)
            if (not inputs.null_count and not outputs.null_count and pc.min(lengths).as_py() > 0
                    and not pc.list_flatten(outputs).null_count):
                if ids.null_count:
                    ids = pa.array([v if v is not None else f"{task}-{i}" for i, v in enumerate(ids.to_pylist())],
                                   pa.string())
                return pa.Table.from_arrays([ids, inputs, outputs], schema=INSTANCE_SCHEMA)
    ids_, inputs_, outputs_ = instance_columns(instances, task=task, path=path, field=field)
    return pa.Table.from_arrays([pa.array(ids_, pa.string()), pa.array(inputs_, pa.string()),
                                 pa.array(outputs_, pa.list_(pa.string()))], schema=INSTANCE_SCHEMA)


def refuse_duplicate_ids(table: pa.Table, task: str, where: Path | str) -> None:
    """A DataError when two instances of `task` share an id: predictions files, resumed evaluations and the
    scorer match a prediction to its instance by (task, instance id), so ids must be unique in a task."""
    ids = table.column("id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return
    first: dict[str, int] = {}
    for row, value in enumerate(ids.to_pylist()):
        if value in first:
            raise DataError(f"task {task!r}: instances {first[value]} and {row} share the id {value!r}",
                            path=where, field="Instances.id",
                            hint="give every instance of a task its own id (or leave ids out: mixtune then "
                                 "numbers them <task>-<n>)")
        first[value] = row


def _bad_instance(inst: Any, i: int, *, task: str, path: str | Path, field: str,
                  line_numbers: list[int] | None) -> None:
    where = f"line {line_numbers[i]}: " if line_numbers else ""
    ident = f" (id {inst['id']!r})" if isinstance(inst, dict) and isinstance(inst.get("id"), str) else ""
    fld = f"{field}[{i}]"
    if not isinstance(inst, dict):
        raise DataError(f"{where}instance {i}{ident} is not an object: {_short(inst)}", path=path, field=fld)
    if not isinstance(inst.get("input"), str):
        raise DataError(f"{where}instance {i}{ident}: 'input' must be a string, got {_short(inst.get('input'))}",
                        path=path, field=f"{fld}.input")
    if not isinstance(inst.get("id") or "", str):
        raise DataError(f"{where}instance {i}: 'id' must be a string, got {_short(inst.get('id'))}",
                        path=path, field=f"{fld}.id")
    out = inst.get("output")
    problem = "is empty" if out in ([], "", None) else f"must be a non-empty list of strings, got {_short(out)}"
    raise DataError(f"{where}instance {i}{ident}: 'output' {problem}", path=path, field=f"{fld}.output",
                    hint="give every instance at least one reference output string, e.g. \"output\": [\"yes\"]")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
