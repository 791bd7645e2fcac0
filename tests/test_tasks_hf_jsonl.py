"""Hugging Face datasets (save_to_disk folder, parquet, JSONL file) and the user's own JSONL tasks."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from mixtune.errors import DataError
from mixtune.tasks import INSTANCE_SCHEMA, HFCollection, Instance, JsonlCollection, open_collection

COLUMNS = {"task": "task_name", "definition": "instruction", "input": "inputs", "output": "targets",
           "category": "cat"}
ROWS = {
    "task_name": ["qa_b", "qa_a", "qa_b", "qa_a", "qa_c", "qa_b"],
    "instruction": ["Answer b.", "Answer a.", "Answer b.", "Answer a.", "Answer c.", "Answer b."],
    "inputs": ["b0", "a0", "b1", "a1", "c0", "b2"],
    "targets": ["x", "y", "z", "w", "v", "u"],
    "cat": ["Question Answering", "Summarization", "Question Answering", "Summarization", "Misc.",
            "Question Answering"],
}


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def test_hf_save_to_disk_groups_rows_by_task(saved: Path, tmp_path: Path) -> None:
    c = HFCollection(saved, tmp_path / "cache", columns=COLUMNS)
    assert c.task_names() == ["qa_a", "qa_b", "qa_c"]
    assert c.index_stats == {"tasks": 3, "indexed": 3}
    info = c.info("qa_b")
    assert info.definition == "Answer b." and info.category == "Question Answering"
    assert info.num_instances == 3 and info.source == "saved"
    table = c.instances("qa_b")
    assert table.schema.equals(INSTANCE_SCHEMA)
    assert table.to_pylist() == [{"id": f"qa_b-{i}", "input": f"b{i}", "output": [o]}
                                 for i, o in enumerate(["x", "z", "u"])]  # row order kept
    assert c.instance("qa_a", 1) == Instance(id="qa_a-1", input="a1", output=("w",))
    assert c.split() is None
    again = HFCollection(saved, tmp_path / "cache", columns=COLUMNS)
    assert again.index_stats["indexed"] == 0  # keyed by the saved dataset's fingerprint
    assert again.instances("qa_b").equals(table)


def test_hf_parquet_with_list_outputs_and_ids(tmp_path: Path) -> None:
    rows = {"task": ["t1", "t2", "t1"], "definition": ["D1", "D2", "D1"], "input": ["i0", "j0", "i1"],
            "output": [["a", "b"], ["c"], ["d"]], "id": ["x0", "y0", "x1"], "category": [["C1", "C9"], ["C2"], ["C1"]]}
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    c = open_collection("hf", path, cache_dir=tmp_path / "cache", name="mine")
    assert c.name == "mine" and c.task_names() == ["t1", "t2"]
    assert c.instances("t1").to_pylist() == [{"id": "x0", "input": "i0", "output": ["a", "b"]},
                                             {"id": "x1", "input": "i1", "output": ["d"]}]
    assert c.info("t1").categories == ("C1", "C9") and c.info("t2").definition == "D2"
    assert open_collection("hf", path, cache_dir=tmp_path / "cache").index_stats["indexed"] == 0
    path.unlink()
    datasets.Dataset.from_dict({**rows, "input": ["I0", "J0", "I1"]}).to_parquet(str(path))
    changed = open_collection("hf", path, cache_dir=tmp_path / "cache")
    assert changed.index_stats["indexed"] == 2 and changed.instance("t1", 0).input == "I0"


def test_hf_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"task": t, "input": i, "output": o}) + "\n"
                            for t, i, o in [("a", "1", "x"), ("b", "2", "y"), ("a", "3", "z")]))
    c = HFCollection(path, tmp_path / "cache")
    assert c.task_names() == ["a", "b"] and c.info("a").definition == ""
    assert [r["input"] for r in c.instances("a").to_pylist()] == ["1", "3"]


def test_hf_numeric_ids(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    datasets.Dataset.from_dict({"task": [7, 3, 7], "input": ["a", "b", "c"], "output": ["x", "y", "z"],
                                "id": [10, 11, 12]}).to_parquet(str(path))
    c = HFCollection(path, tmp_path / "cache")
    assert c.task_names() == ["3", "7"]
    assert c.instances("7").column("id").to_pylist() == ["10", "12"]


def test_hf_errors(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'task' for 'task'.*task_name") as e:
        HFCollection(saved, tmp_path / "cache")
    assert e.value.field == "columns.task"
    with pytest.raises(DataError, match="unknown column role 'outputs'.*did you mean 'output'"):
        HFCollection(saved, tmp_path / "cache", columns={**COLUMNS, "outputs": "targets"})
    with pytest.raises(DataError, match="no column 'missing' for 'definition'"):
        HFCollection(saved, tmp_path / "cache", columns={**COLUMNS, "definition": "missing"})
    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"task": ["a", "a"], "input": ["1", "2"], "output": [["x"], []]}).to_parquet(str(empty))
    with pytest.raises(DataError, match="row 1: 'output' is empty"):
        HFCollection(empty, tmp_path / "cache")
    nulls = tmp_path / "nulls.parquet"
    datasets.Dataset.from_dict({"task": ["a", None], "input": ["1", "2"], "output": ["x", "y"]}).to_parquet(str(nulls))
    with pytest.raises(DataError, match="row 1 has no 'task'"):
        HFCollection(nulls, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("instances/*.arrow"))


def test_hf_missing_local_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot load the dataset"):
        HFCollection(str(tmp_path / "no" / "such" / "dataset"), tmp_path / "cache")


# ---------------------------------------------------------------- JSONL


def _write_jsonl(path: Path, lines: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_single_file_with_header_lines_and_sidecar(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "mine" / "tasks.jsonl", [
        {"task": "greet", "definition": "Reply politely.", "categories": ["Dialogue"],
         "positive_examples": [{"input": "hi", "output": "hello", "explanation": "polite"}]},
        {"task": "greet", "input": "hey", "output": "hello there"},
        {"task": "count", "input": "1 2 3", "output": ["3", "three"], "id": "c-1"},
        "",
        {"task": "greet", "input": "yo", "output": ["hi"]},
    ])
    (path.parent / "tasks.yaml").write_text("count:\n  definition: Count the numbers.\n  category: Arithmetic\n"
                                            "  input_language: English\n")
    c = JsonlCollection(path, tmp_path / "cache")
    assert c.name == "tasks" and c.task_names() == ["count", "greet"]
    greet = c.info("greet")
    assert greet.definition == "Reply politely." and greet.category == "Dialogue"
    assert greet.positive_examples[0].explanation == "polite" and greet.num_instances == 2
    assert c.instances("greet").to_pylist() == [{"id": "greet-0", "input": "hey", "output": ["hello there"]},
                                                {"id": "greet-1", "input": "yo", "output": ["hi"]}]
    count = c.info("count")
    assert (count.definition, count.category, count.input_language) == ("Count the numbers.", "Arithmetic",
                                                                          ("English",))
    assert c.instance("count", 0) == Instance(id="c-1", input="1 2 3", output=("3", "three"))
    assert JsonlCollection(path, tmp_path / "cache").index_stats["indexed"] == 0
    (path.parent / "tasks.yaml").write_text("count:\n  definition: Count them.\n")
    assert open_collection("jsonl", path, cache_dir=tmp_path / "cache").info("count").definition == "Count them."


def test_jsonl_folder_of_task_files(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    _write_jsonl(folder / "upper.jsonl", [{"definition": "Uppercase the text."}, {"input": "ab", "output": "AB"}])
    _write_jsonl(folder / "lower.jsonl", [{"input": "AB", "output": "ab"}])
    (folder / "lower.yaml").write_text("definition: Lowercase the text.\ncategories: [Text]\n")
    (folder / "splits" / "default").mkdir(parents=True)
    (folder / "splits" / "default" / "train_tasks.txt").write_text("upper\n")
    (folder / "splits" / "default" / "test_tasks.txt").write_text("lower\n")
    c = JsonlCollection(folder, tmp_path / "cache", name="own")
    assert c.task_names() == ["lower", "upper"] and c.info("upper").source == "own"
    assert c.info("lower").definition == "Lowercase the text." and c.info("lower").category == "Text"
    assert c.instance("upper", 0) == Instance(id="upper-0", input="ab", output=("AB",))
    assert c.split().train == ("upper",) and c.split().held_out == {"lower"}


@pytest.mark.parametrize(("lines", "message"), [
    (['{"task": "a", "input": "x", "output": "y"}', '{"task": "a", "input": "x" "output": "y"}'],
     r"line 2, column 28: malformed JSON"),
    ([{"input": "x", "output": "y"}], r"line 1: no 'task'"),
    ([{"task": "a", "input": "x", "output": []}], r"line 1: instance 0: 'output' is empty"),
    ([{"task": "a", "input": "x", "output": "y"}, {"task": "a", "input": "x", "output": [1]}],
     r"line 2: instance 1: 'output' must be a non-empty list of strings"),
    ([{"task": "a", "input": 3, "output": "y"}], r"line 1: instance 0: 'input' must be a string"),
    ([{"task": "../a", "input": "x", "output": "y"}], r"not a plain task name"),
    ([["a"]], r"line 1: expected a JSON object"),
    ([{"task": "a", "definition": "only a header"}], r"the task has no instances"),
    ([{"task": "a", "definition": "D1", "input": "x", "output": "y"}, {"task": "a", "definition": "D2"}],
     r"line 2: task 'a' has a second, different 'definition'"),
    ([{"task": "a", "defintion": "typo", "input": "x", "output": "y"}], r"unknown header key 'defintion'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, lines: list[object], message: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=message) as e:
        JsonlCollection(path, tmp_path / "cache")
    assert e.value.path.endswith("bad.jsonl")
    assert not list((tmp_path / "cache").rglob("instances/*.arrow"))


def test_jsonl_folder_task_mismatch_and_bad_sidecar(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "f" / "one.jsonl", [{"task": "two", "input": "x", "output": "y"}])
    with pytest.raises(DataError, match="task 'two' in the file of task 'one'"):
        JsonlCollection(tmp_path / "f", tmp_path / "cache")
    path = _write_jsonl(tmp_path / "g" / "t.jsonl", [{"task": "a", "input": "x", "output": "y"}])
    (path.parent / "tasks.yaml").write_text("a: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML") as e:
        JsonlCollection(path, tmp_path / "cache")
    assert e.value.path.endswith("tasks.yaml")
    (path.parent / "tasks.yaml").write_text("b:\n  definition: no instances\n")
    with pytest.raises(DataError, match="tasks.yaml describes task 'b', which has no instances"):
        JsonlCollection(path, tmp_path / "cache")
