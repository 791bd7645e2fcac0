"""`mixtune.tasks.matching`: one rule for task names and globs, used by mixtures and eval sets alike."""

from __future__ import annotations

import pytest

from mixtune.errors import ConfigError, DataError
from mixtune.mixtures.plan import plan_mixture
from mixtune.mixtures.spec import load_mixture
from mixtune.tasks.collection import open_collection
from mixtune.tasks.matching import TaskMatchError, glob_tasks, match_tasks, resolve_tasks

NAMES = ["task1146_country_capital", "task199_mnli_classification", "Task9_Upper"]


def test_glob_is_fnmatch_on_the_whole_name_and_case_sensitive() -> None:
    assert glob_tasks("task1*", NAMES) == ["task1146_country_capital", "task199_mnli_classification"]
    assert glob_tasks("task9*", NAMES) == []  # not "Task9_Upper": case matters on every platform
    assert glob_tasks("*capital", NAMES) == ["task1146_country_capital"]
    assert glob_tasks("task1[0-4]*", NAMES) == ["task1146_country_capital"]
    assert match_tasks(["Task9_Upper", "task199*"], NAMES) == {"Task9_Upper", "task199_mnli_classification"}


def test_no_match_is_one_error_type_with_did_you_mean() -> None:
    with pytest.raises(TaskMatchError, match="glob 'nothing\\*' matches no task") as glob:
        match_tasks(["nothing*"], NAMES, field="x")
    with pytest.raises(TaskMatchError, match="did you mean 'task199_mnli_classification'") as name:
        match_tasks(["task199_mnli_clasification"], NAMES, field="x")
    for err in (glob.value, name.value):  # callers catching either of the old types still catch it
        assert isinstance(err, ConfigError) and isinstance(err, DataError)
    assert name.value.field == "x[0]"


def test_mixtures_and_eval_sets_pick_the_same_tasks(bundled_dir) -> None:
    """The same patterns through a mixture's `include` and an eval YAML's `tasks` pick the same tasks."""
    collection = open_collection("superni", bundled_dir)
    patterns = ["task1*", "task288_gigaword_summarization"]
    spec = load_mixture({"name": "m", "total_examples": 8, "held_out": {"allow": True}, "sources": [
        {"name": "s", "path": str(bundled_dir), "tasks": {"include": patterns}}]})
    in_mixture = sorted({t.name for t in plan_mixture(spec).tasks})
    expected = sorted(n for n in collection.task_names()
                      if n.startswith("task1") or n == "task288_gigaword_summarization")
    assert in_mixture == resolve_tasks(collection, tasks=patterns) == expected
    for bad in (["Task1*"], ["task288_gigaword"]):
        with pytest.raises(TaskMatchError):
            resolve_tasks(collection, tasks=bad)
        with pytest.raises(TaskMatchError):
            plan_mixture(load_mixture({"name": "m", "total_examples": 8, "sources": [
                {"name": "s", "path": str(bundled_dir), "tasks": {"include": bad}}]}))
