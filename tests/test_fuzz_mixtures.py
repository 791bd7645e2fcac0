"""Property-based tests of the mixture YAML loader (and the planner behind it): any YAML text, any
mapping and any near-valid mixture give a plan or mixtune's own ConfigError/DataError/HeldOutError."""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUNDLED
from fuzz_strategies import FUZZ, json_values, no_fsync, result_or_mixtune_error, texts
from hypothesis import assume, event, given
from hypothesis import strategies as st

from mixtune.errors import MixtuneError
from mixtune.mixtures.plan import plan_mixture
from mixtune.mixtures.spec import load_mixture

pytestmark = pytest.mark.usefixtures("no_fsync")
__all__ = ["no_fsync"]

SAMPLE_TASKS = ["task1*", "task0*", "task1557_jfleg_answer_generation", "task288_gigaword_summarization", "nosuch"]
small_int = st.integers(min_value=-3, max_value=50)
positive = st.floats(min_value=1e-3, max_value=1e3)
names = st.lists(st.one_of(st.sampled_from(SAMPLE_TASKS), texts), max_size=3)
valid_source = st.fixed_dictionaries({
    "name": st.just("superni"), "path": st.just("bundled"), "split": st.just("default"),
    "missing_tasks": st.just("skip"),
    "tasks": st.fixed_dictionaries({}, optional={
        "include": st.lists(st.sampled_from(SAMPLE_TASKS[:4]), max_size=2),
        "exclude": st.lists(st.sampled_from(SAMPLE_TASKS[:4]), max_size=1),
        "languages": st.sampled_from([["English"], []]),
        "weights": st.dictionaries(st.sampled_from(SAMPLE_TASKS[:2]), positive, max_size=2)}),
    "encoding": st.fixed_dictionaries({}, optional={
        "definition": st.booleans(), "pos_examples": st.integers(0, 3), "neg_examples": st.integers(0, 2),
        "explanation": st.booleans(), "task_name": st.booleans(), "tk_instruct": st.booleans()}),
})
valid_mixture = st.builds(
    lambda common, size: {**common, **size},
    st.fixed_dictionaries({
        "name": texts, "seed": st.integers(min_value=-(2**70), max_value=2**70), "temperature": positive,
        "max_instances_per_task": st.one_of(st.none(), st.integers(1, 50)),
        "sources": st.lists(valid_source, min_size=1, max_size=1)}),
    st.one_of(st.fixed_dictionaries({"total_examples": st.integers(1, 3000)}),
              st.fixed_dictionaries({"epochs": st.sampled_from([0.01, 0.5, 1, 2.5])})),
)
# Places a mutation can hit, and values beyond the random JSON ones that probe the edges.
FIELDS = ["name", "seed", "total_examples", "epochs", "temperature", "max_instances_per_task", "sources",
          "sources_weight", "mixtures", "held_out", "held_out.split", "held_out.tasks", "held_out.allow",
          "sources.0.name", "sources.0.type", "sources.0.path", "sources.0.split", "sources.0.weight",
          "sources.0.columns", "sources.0.missing_tasks", "sources.0.tasks", "sources.0.tasks.include",
          "sources.0.tasks.exclude", "sources.0.tasks.categories", "sources.0.tasks.weights",
          "sources.0.encoding", "sources.0.encoding.pos_examples", "sources.0.encoding.neg_examples",
          "sources.0.encoding.tk_instruct", "unknown_key", "sources.0.unknown_key"]
edge_values = st.sampled_from([0, -1, 1, 10**30, 1e-300, 1e300, float("inf"), float("nan"), True, "", "bundled",
                               "default", "../..", "/", "*", [], {}, [{"path": "mix.yaml"}], ["*"], ["task1*"],
                               {"task1*": 0.0}, {"task1*": 1e300}, "superni", "hf", "jsonl", None])
mutations = st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(edge_values, json_values)), max_size=2)


def _mutate(data: dict, changes: list[tuple[str, object]]) -> dict:
    for field, value in changes:
        node: object = data
        keys = field.split(".")
        for key in keys[:-1]:
            if isinstance(node, list):
                node = node[int(key)] if node and isinstance(node[0], dict) else None
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node[keys[-1]] = value
    return data


def _load_and_plan(text: str) -> object:
    with tempfile.TemporaryDirectory(prefix="fuzz-mixture-") as tmp:
        path = Path(tmp) / "mix.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")

        def run() -> object:
            spec = load_mixture(path)
            plan = plan_mixture(spec)
            n = len(plan)
            assert len(plan.hash) == 16 and set(plan.hash) <= set("0123456789abcdef")
            if n:
                example = plan.example(n - 1)
                assert isinstance(example["prompt"], str) and example["task"] in {t.name for t in plan.tasks}
            return plan

        return result_or_mixtune_error(run)


def _dump(data: object) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, UnicodeError):  # the generator made something YAML cannot write
        assume(False)
        raise


@FUZZ
@given(text=st.one_of(texts, st.text(max_size=200)))
def test_random_yaml_text(text: str) -> None:
    _load_and_plan(text)


@FUZZ
@given(data=json_values)
def test_random_yaml_documents(data: object) -> None:
    _load_and_plan(_dump(data))


@functools.cache
def _bundled_sizes() -> dict[str, int]:
    """Instances per task of the bundled sample, counted in its JSON files."""
    return {f.stem: len(json.loads(f.read_text(encoding="utf-8"))["Instances"])
            for f in (BUNDLED / "tasks").glob("*.json")}


def _split_tasks(split: str, kind: str) -> set[str]:
    path = BUNDLED / "splits" / split / f"{kind}_tasks.txt"
    return set(path.read_text(encoding="utf-8").split()) if path.is_file() else set()


def _check_plan_by_hand(plan) -> None:
    """A plan of one bundled SuperNI source, checked against the spec and the sample's files: its size, the rates
    (min(n, cap)^(1/T) x weight, normalised; seqio's formula), the realised counts (within one of rate x size),
    the pools (no more distinct instances than the cap), the include/exclude globs and the held-out guard."""
    spec = plan.spec
    (source,) = spec.sources
    sizes = _bundled_sizes()
    names = [t.name for t in plan.tasks]
    cap = spec.max_instances_per_task
    pools = {t: min(sizes[t], cap) if cap else sizes[t] for t in names}
    if spec.total_examples is not None:
        assert len(plan) == spec.total_examples
    else:
        assert len(plan) == round(float(spec.epochs) * sum(pools.values()))
    weights = []
    for t in names:
        w = source.weight
        for pattern, value in source.tasks.weights.items():
            if fnmatch.fnmatchcase(t, pattern):
                w *= value
        weights.append(w)
    logs = [math.log(pools[t]) / spec.temperature + math.log(w) for t, w in zip(names, weights, strict=True)]
    if all(math.isfinite(x) for x in logs):
        top = max(logs)
        scores = [math.exp(x - top) for x in logs]
        assert np.allclose(plan.rates, [x / sum(scores) for x in scores], rtol=1e-6, atol=1e-12)
    counts = np.bincount(plan.index.task_ids, minlength=len(names))
    assert counts.sum() == len(plan) and np.all(np.abs(counts - plan.rates * len(plan)) < 1 + 1e-6)
    for k, t in enumerate(names):
        rows = plan.index.rows[plan.index.task_ids == k]
        assert len(set(rows.tolist())) <= pools[t] and (rows < sizes[t]).all()
    include, exclude = source.tasks.include, source.tasks.exclude
    assert all(not include or any(fnmatch.fnmatchcase(t, p) for p in include) for t in names)
    assert not any(fnmatch.fnmatchcase(t, p) for t in names for p in exclude)
    if source.split is not None:
        assert set(names) <= _split_tasks(source.split, "train")
    held = _split_tasks(spec.held_out.split or source.split or "default", "test") | set(spec.held_out.tasks)
    if not spec.held_out.allow:
        assert not set(names) & held


@FUZZ
@given(data=valid_mixture, changes=mutations)
def test_near_valid_mixtures(data: dict, changes: list) -> None:
    result = _load_and_plan(_dump(_mutate(data, changes)))
    if isinstance(result, MixtuneError):
        event(type(result).__name__)
        return
    spec = result.spec
    simple = (not spec.children and not spec.stage_specs and len(spec.sources) == 1
              and spec.sources[0].type == "superni" and spec.sources[0].path == "bundled")
    event("planned, checked by hand" if simple else "planned")
    assert abs(result.rates.sum() - 1) < 1e-9
    if simple:
        _check_plan_by_hand(result)


@FUZZ
@given(tag=st.sampled_from(["!!python/object:os.system", "!!python/object/apply:os.system ['true']",
                            "!!python/name:os.system", "!!python/object/new:subprocess.Popen [['true']]"]))
def test_python_tags_are_refused(tag: str) -> None:
    result = _load_and_plan(f"name: {tag}\nseed: 1\n")
    assert isinstance(result, MixtuneError) and "YAML" in str(result)


BASE = {"name": "x", "seed": 1, "total_examples": 10,
        "sources": [{"name": "superni", "path": "bundled", "split": "default", "missing_tasks": "skip"}]}


@pytest.mark.parametrize("change, planned", [
    ({"temperature": 0.00390625}, True),             # was: overflow -> NaN rates -> numpy ValueError
    ({"temperature": 1e-300}, True),
    ({"sources": [{**BASE["sources"][0], "tasks": {"weights": {"task1*": 1e300}}}]}, True),
    ({"total_examples": 10**30}, False),              # was: OverflowError
    ({"total_examples": None, "epochs": 1e300}, False),  # was: OverflowError
    ({"total_examples": 20_000_000_000}, False),      # was: MemoryError
    ({"name": "\ud800"}, False),                      # was: UnicodeEncodeError while hashing
    ({"mixtures": [{"path": ""}]}, False),            # was: IsADirectoryError
])
def test_cases_the_fuzzer_found(change: dict, planned: bool) -> None:
    result = _load_and_plan(_dump({**BASE, **change}))
    assert isinstance(result, MixtuneError) != planned, result
    if planned:
        assert abs(result.rates.sum() - 1) < 1e-9 and len(result) == 10
