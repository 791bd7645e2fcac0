"""Bad SuperNI input: each problem is a DataError naming the file (and line/field), and nothing
half-written is left in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.errors import DataError
from mixtune.tasks import SuperNICollection, open_collection

GOOD = {
    "Definition": ["Answer yes or no."],
    "Categories": ["Answerability Classification"],
    "Positive Examples": [{"input": "Is it?", "output": "yes", "explanation": "It is."}],
    "Instances": [{"id": "t-0", "input": "a", "output": ["yes"]}, {"id": "t-1", "input": "b", "output": ["no"]}],
}


def _collection(root: Path, tasks: dict[str, object]) -> Path:
    (root / "tasks").mkdir(parents=True)
    for name, content in tasks.items():
        text = content if isinstance(content, (str, bytes)) else json.dumps(content, indent=2)
        path = root / "tasks" / f"{name}.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def _open_error(tmp_path: Path, content: object) -> DataError:
    root = _collection(tmp_path / "coll", {"task001_good": GOOD, "task002_bad": content})
    with pytest.raises(DataError) as e:
        SuperNICollection(root, tmp_path / "cache")
    assert e.value.path is not None and e.value.path.endswith("task002_bad.json")
    return e.value


def _with(**changes: object) -> dict:
    task = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            task.pop(key)
        else:
            task[key] = value
    return task


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "Definition": ["x"],\n  "Instances": [\n    {"id": "a" "input": "b", "output": ["c"]}\n  ]\n}\n'
    err = _open_error(tmp_path, text)
    assert "malformed JSON at line 4, column 16" in str(err)
    assert "task002_bad.json" in str(err)


def test_missing_definition(tmp_path: Path) -> None:
    err = _open_error(tmp_path, _with(Definition=None))
    assert err.field == "Definition" and "no 'Definition'" in str(err)


def test_missing_instances(tmp_path: Path) -> None:
    err = _open_error(tmp_path, _with(Instances=None))
    assert err.field == "Instances" and "no 'Instances'" in str(err)


def test_empty_task(tmp_path: Path) -> None:
    err = _open_error(tmp_path, _with(Instances=[]))
    assert "no instances" in str(err) and err.field == "Instances"


def test_empty_output_names_the_instance(tmp_path: Path) -> None:
    instances = [{"id": "t-0", "input": "a", "output": ["x"]}, {"id": "t-1", "input": "b", "output": []}]
    err = _open_error(tmp_path, _with(Instances=instances))
    assert err.field == "Instances[1].output"
    assert "instance 1 (id 't-1'): 'output' is empty" in str(err)


@pytest.mark.parametrize("output", ["yes", ["yes", 3], [None], {"a": "b"}])
def test_output_not_a_list_of_strings(tmp_path: Path, output: object) -> None:
    err = _open_error(tmp_path, _with(Instances=[{"id": "t-0", "input": "a", "output": output}]))
    assert err.field == "Instances[0].output" and "non-empty list of strings" in str(err)


def test_instance_input_not_text(tmp_path: Path) -> None:
    err = _open_error(tmp_path, _with(Instances=[{"id": "t-0", "input": 5, "output": ["x"]}]))
    assert err.field == "Instances[0].input"


def test_non_dict_top_level(tmp_path: Path) -> None:
    err = _open_error(tmp_path, [GOOD])
    assert "expected a JSON object" in str(err) and "got a list" in str(err)


def test_bad_definition_and_examples(tmp_path: Path) -> None:
    assert _open_error(tmp_path / "a", _with(Definition=5)).field == "Definition"
    assert _open_error(tmp_path / "b", _with(Definition=[])).field == "Definition"
    err = _open_error(tmp_path / "c", _with(**{"Positive Examples": [{"input": "x"}]}))
    assert err.field == "Positive Examples[0].output"


def test_not_utf8(tmp_path: Path) -> None:
    err = _open_error(tmp_path, b'{"Definition": ["\xff"]}')
    assert "not UTF-8" in str(err)


def test_nothing_half_written_and_good_files_kept(tmp_path: Path) -> None:
    root = _collection(tmp_path / "coll", {"task001_good": GOOD, "task002_bad": "{"})
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError):
        SuperNICollection(root, cache_dir)
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") or p.suffix == ".tmp"]
    assert len([p for p in files if p.suffix == ".arrow"]) == 1  # only the good task
    (root / "tasks" / "task002_bad.json").write_text(json.dumps(GOOD))
    c = SuperNICollection(root, cache_dir)
    assert c.index_stats["parsed"] == 1  # the good task's entry was kept
    assert c.task_names() == ["task001_good", "task002_bad"]


@pytest.mark.parametrize("line", ["../x", "a/b", "/etc/passwd", ".hidden", "a b", "..\\x"])
def test_split_line_that_is_not_a_task_name(tmp_path: Path, line: str) -> None:
    root = _collection(tmp_path / "coll", {"task001_good": GOOD})
    folder = root / "splits" / "default"
    folder.mkdir(parents=True)
    (folder / "train_tasks.txt").write_text(f"task001_good\n{line}\n")
    c = SuperNICollection(root, tmp_path / "cache")
    with pytest.raises(DataError) as e:
        c.split()
    assert e.value.path.endswith("train_tasks.txt") and e.value.field == "line 2"
    assert "not a plain task name" in str(e.value)


def test_split_name_is_not_a_path(tmp_path: Path) -> None:
    c = SuperNICollection(_collection(tmp_path / "coll", {"task001_good": GOOD}), tmp_path / "cache")
    with pytest.raises(DataError, match="not a plain task name"):
        c.split("../../etc")


def test_bad_task_file_name(tmp_path: Path) -> None:
    root = _collection(tmp_path / "coll", {"task001 bad name": GOOD})
    with pytest.raises(DataError, match="not a plain task name"):
        SuperNICollection(root, tmp_path / "cache")


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="collection folder not found"):
        SuperNICollection(tmp_path / "nope", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tasks/ folder"):
        SuperNICollection(tmp_path / "empty", tmp_path / "cache")
    (tmp_path / "empty" / "tasks").mkdir()
    with pytest.raises(DataError, match="no task files"):
        SuperNICollection(tmp_path / "empty", tmp_path / "cache")


def test_unknown_collection_type() -> None:
    with pytest.raises(DataError, match="unknown collection type 'supernii'.*did you mean 'superni'"):
        open_collection("supernii")


def test_duplicate_instance_ids_are_refused_when_the_collection_loads(tmp_path: Path) -> None:
    """Predictions and resumed evaluations match an instance by (task, id): two instances with one id would
    share one prediction, so the task file is refused, naming both instances."""
    twins = [{"id": "t-0", "input": "a", "output": ["yes"]}, {"id": "t-0", "input": "b", "output": ["no"]}]
    error = _open_error(tmp_path, _with(Instances=twins))
    assert "instances 0 and 1 share the id 't-0'" in str(error) and error.field == "Instances.id"


def test_duplicate_instance_ids_in_jsonl_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task": "t", "id": "x", "input": "a", "output": "1"}\n'
                    '{"task": "t", "id": "x", "input": "b", "output": "2"}\n')
    with pytest.raises(DataError, match="instances 0 and 1 share the id 'x'"):
        open_collection("jsonl", path, cache_dir=tmp_path / "cache")
