"""Property-based tests of the SuperNI task-file loader: any bytes, JSON or near-valid task file, any
file name and any split-file line give a collection or mixtune's own DataError, never another exception."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from fuzz_strategies import FUZZ, json_values, maybe, no_fsync, result_or_mixtune_error, texts
from hypothesis import given
from hypothesis import strategies as st

from mixtune.errors import DataError
from mixtune.tasks.superni import SuperNICollection

pytestmark = pytest.mark.usefixtures("no_fsync")
__all__ = ["no_fsync"]

instances = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"input": maybe(texts), "output": maybe(st.lists(texts, max_size=3))},
            optional={"id": maybe(texts), "extra": json_values},
        ),
        json_values,
    ),
    max_size=5,
)
demos = st.lists(
    st.fixed_dictionaries({"input": maybe(texts), "output": maybe(texts)}, optional={"explanation": maybe(texts)}),
    max_size=3,
)
task_files = st.fixed_dictionaries(
    {},
    optional={
        "Definition": maybe(st.lists(texts, max_size=2)),
        "Positive Examples": maybe(demos),
        "Negative Examples": maybe(demos),
        "Categories": maybe(st.lists(texts, max_size=2)),
        "Input_language": maybe(st.lists(texts, max_size=2)),
        "Output_language": maybe(st.lists(texts, max_size=2)),
        "Instruction_language": maybe(st.lists(texts, max_size=2)),
        "Instances": maybe(instances),
        "Source": json_values,
    },
)
file_names = st.one_of(
    st.sampled_from(["task001_ok", "..", ".", "-x", "task 1", "tâche", "a.b", "_t", "t" * 200]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20),
)


def _open_and_read(root: Path) -> object:
    collection = SuperNICollection(root, workers=1)
    for task in collection.task_names():
        info = collection.info(task)
        assert isinstance(info.definition, str) and isinstance(info.category, str)
        table = collection.instances(task)
        assert table.num_rows > 0 and table.column_names[:3] == ["id", "input", "output"]
        first = collection.instance(task, 0)
        assert isinstance(first.input, str) and first.output and all(isinstance(o, str) for o in first.output)
    return collection.split("default")


def _collection(files: dict[str, bytes], splits: dict[str, str] | None = None) -> object:
    root = Path(tempfile.mkdtemp(prefix="fuzz-superni-"))
    try:
        (root / "tasks").mkdir()
        for name, data in files.items():
            (root / "tasks" / f"{name}.json").write_bytes(data)
        for part, text in (splits or {}).items():
            folder = root / "splits" / "default"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{part}_tasks.txt").write_text(text, encoding="utf-8", errors="surrogatepass")
        return result_or_mixtune_error(lambda: _open_and_read(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _collection({"task001_fuzz": data})


@FUZZ
@given(value=json_values)
def test_random_json(value: object) -> None:
    _collection({"task001_fuzz": json.dumps(value).encode()})


@FUZZ
@given(task=task_files, indent=st.sampled_from([None, 1]))
def test_near_valid_task_files(task: dict, indent: int | None) -> None:
    result = _collection({"task001_fuzz": json.dumps(task, indent=indent).encode()})
    if not isinstance(result, DataError):  # accepted: then it really had a definition and good instances
        assert isinstance(task.get("Definition"), (str, list)) and task["Instances"]


@FUZZ
@given(name=file_names)
def test_random_task_file_names(name: str) -> None:
    good = {"Definition": ["d"], "Instances": [{"input": "i", "output": ["o"]}]}
    try:
        payload = {name: json.dumps(good).encode()}
        result = _collection(payload)
    except OSError:  # the file system itself refused the name (too long): nothing for mixtune to do
        return
    if not isinstance(result, DataError):
        assert "/" not in name and not name.startswith(".")


@FUZZ
@given(lines=st.lists(texts, max_size=5), part=st.sampled_from(["train", "test", "excluded"]))
def test_random_split_file_lines(lines: list[str], part: str) -> None:
    good = json.dumps({"Definition": ["d"], "Instances": [{"input": "i", "output": ["o"]}]}).encode()
    result = _collection({"task001_ok": good}, {part: "\n".join(lines)})
    if not isinstance(result, DataError):
        split = result
        assert split is not None
        for name in (*split.train, *split.test, *split.excluded):
            assert "/" not in name and name != ".." and not Path(name).is_absolute()


jsonl_lines = st.lists(st.one_of(
    st.fixed_dictionaries({"task": maybe(st.sampled_from(["t1", "t2"])), "input": maybe(texts),
                           "output": maybe(st.lists(texts, max_size=2))},
                          optional={"definition": maybe(texts), "id": maybe(texts), "category": maybe(texts)}),
    json_values), max_size=4)


@FUZZ
@given(lines=jsonl_lines)
def test_jsonl_tasks(lines: list) -> None:
    """The JSONL collection loader: random lines give tasks or a DataError."""
    from mixtune.tasks.collection import open_collection

    root = Path(tempfile.mkdtemp(prefix="fuzz-jsonl-"))
    try:
        path = root / "tasks.jsonl"
        path.write_bytes("\n".join(json.dumps(line) for line in lines).encode("utf-8", "surrogatepass"))

        def read() -> object:
            collection = open_collection("jsonl", path)
            for task in collection.task_names():
                collection.info(task)
                assert collection.instances(task).num_rows > 0
            return collection

        result_or_mixtune_error(read)
    finally:
        shutil.rmtree(root, ignore_errors=True)
