"""Property-based tests of the predictions scorer: any JSONL file (random bytes, random JSON lines,
near-valid official-format records) gives scores in [0, 100] or mixtune's own DataError."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from fuzz_strategies import FUZZ, json_values, maybe, result_or_mixtune_error, texts
from hypothesis import given
from hypothesis import strategies as st

from mixtune.errors import MixtuneError
from mixtune.eval.metrics import score_file_details
from mixtune.tasks.collection import open_collection

TASKS = ["task288_gigaword_summarization", "task1557_jfleg_answer_generation", "no_such_task"]
records = st.fixed_dictionaries(
    {"Task": maybe(st.one_of(st.sampled_from(TASKS), texts)),
     "Instance": maybe(st.fixed_dictionaries(
         {"input": maybe(texts), "output": maybe(st.lists(texts, max_size=3))}, optional={"id": maybe(texts)})),
     "prediction": maybe(texts)},
    optional={"Categories": maybe(st.lists(texts, max_size=2)), "Definition": json_values,
              "Prediction": maybe(texts)},
)


@pytest.fixture(scope="module")
def bundled():
    return open_collection()


def _score(payload: bytes, collection: object = None) -> object:
    with tempfile.TemporaryDirectory(prefix="fuzz-pred-") as tmp:
        path = Path(tmp) / "predictions.jsonl"
        path.write_bytes(payload)

        def run() -> dict:
            scores = score_file_details(path, collection, workers=1).as_dict()
            for table in (scores["overall"], *scores["per_category"].values(), *scores["per_task"].values()):
                for value in table.values():
                    assert 0.0 <= value <= 100.0 and not math.isnan(value)
            return scores

        return result_or_mixtune_error(run)


def _jsonl(items: list) -> bytes:
    return "\n".join(json.dumps(r) for r in items).encode("utf-8", "surrogatepass")


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _score(data)


@FUZZ
@given(lines=st.lists(json_values, max_size=4))
def test_random_json_lines(lines: list) -> None:
    _score(_jsonl(lines))


@FUZZ
@given(lines=st.lists(records, min_size=1, max_size=4), with_collection=st.booleans())
def test_near_valid_records(lines: list, with_collection: bool, bundled: object) -> None:
    result = _score(_jsonl(lines), bundled if with_collection else None)
    if not isinstance(result, MixtuneError):
        assert set(result["per_task"]) == {r["Task"] for r in lines}


def test_lone_surrogate_prediction_is_scored_or_refused() -> None:
    line = {"Task": "t", "Instance": {"input": "i", "output": ["a b"]}, "prediction": "a \ud800 b"}
    result = _score(_jsonl([line]))
    assert isinstance(result, (dict, MixtuneError))
