"""Mixture YAML validation and the held-out guard: each bad input is a clear error naming file and field."""

from __future__ import annotations

import pytest

from mixtune.errors import ConfigError, HeldOutError
from mixtune.mixtures import load_mixture, plan_mixture

GOOD = """
name: m
seed: 1
total_examples: 100
temperature: 2.0
sources:
  - name: superni
    path: bundled
    split: default
    missing_tasks: skip
"""


def _yaml(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(exc_info):
    return str(exc_info.value)


def test_good_file_and_overrides(tmp_path):
    spec = load_mixture(_yaml(tmp_path, GOOD), overrides=["seed=9", "temperature=3"])
    assert (spec.seed, spec.temperature, spec.total_examples) == (9, 3.0, 100)
    assert spec.path == (tmp_path / "m.yaml").resolve()


def test_unknown_key_names_file_field_and_suggestion(tmp_path):
    path = _yaml(tmp_path, GOOD.replace("temperature: 2.0", "temprature: 2.0"))
    with pytest.raises(ConfigError) as e:
        load_mixture(path)
    assert "m.yaml" in _error(e) and "temprature" in _error(e) and "did you mean 'temperature'" in _error(e)


def test_unknown_key_inside_a_source(tmp_path):
    path = _yaml(tmp_path, GOOD + "    wieght: 2\n")
    with pytest.raises(ConfigError) as e:
        load_mixture(path)
    assert "sources[0].wieght" in _error(e) and "weight" in _error(e)


@pytest.mark.parametrize("line, field", [
    ("temperature: hot", "temperature"),
    ("temperature: -1.0", "temperature"),
    ("temperature: 0", "temperature"),
    ("total_examples: many", "total_examples"),
])
def test_wrong_type_or_value(tmp_path, line, field):
    text = GOOD.replace("temperature: 2.0", line) if "temperature" in line else GOOD.replace(
        "total_examples: 100", line)
    with pytest.raises(ConfigError) as e:
        load_mixture(_yaml(tmp_path, text))
    assert f"field '{field}'" in _error(e) and "m.yaml" in _error(e)


def test_size_needs_exactly_one_of_total_examples_or_epochs(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_mixture(_yaml(tmp_path, GOOD + "epochs: 2\n"))
    with pytest.raises(ConfigError, match="neither total_examples nor epochs"):
        load_mixture(_yaml(tmp_path, GOOD.replace("total_examples: 100\n", "")))


def test_unknown_task_suggests_near_names(tmp_path):
    path = _yaml(tmp_path, GOOD + "    tasks: {include: [task1146_country_captial]}\n")
    with pytest.raises(ConfigError) as e:
        plan_mixture(load_mixture(path))
    msg = _error(e)
    assert "m.yaml" in msg and "sources[0].tasks.include[0]" in msg
    assert "unknown task 'task1146_country_captial'" in msg and "did you mean 'task1146_country_capital'" in msg


def test_glob_matching_nothing(tmp_path):
    path = _yaml(tmp_path, GOOD + "    tasks: {include: ['task99999*']}\n")
    with pytest.raises(ConfigError, match=r"glob 'task99999\*' matches no task"):
        plan_mixture(load_mixture(path))


def test_unknown_category_and_weight_for_unselected_task(tmp_path):
    with pytest.raises(ConfigError) as e:
        plan_mixture(load_mixture(_yaml(tmp_path, GOOD + "    tasks: {categories: [Sentiment Analysys]}\n")))
    assert "sources[0].tasks.categories[0]" in _error(e) and "'Sentiment Analysis'" in _error(e)
    with pytest.raises(ConfigError, match="not a selected task"):
        plan_mixture(load_mixture(_yaml(tmp_path, GOOD + "    tasks: {weights: {task_nope: 2}}\n")))


def test_filters_select_by_category_and_language(tmp_path):
    text = GOOD + "    tasks: {categories: [Sentiment Analysis], languages: [English], output_languages: [English]}\n"
    plan = plan_mixture(load_mixture(_yaml(tmp_path, text)))
    assert plan.tasks and {t.category for t in plan.tasks} == {"Sentiment Analysis"}


def test_missing_split_task_is_an_error_unless_skipped(tmp_path):
    path = _yaml(tmp_path, GOOD.replace("missing_tasks: skip", "missing_tasks: error"))
    with pytest.raises(ConfigError) as e:
        plan_mixture(load_mixture(path))
    assert "sources[0].missing_tasks" in _error(e) and "696 train task(s)" in _error(e)


def test_cycle_between_nested_mixtures(tmp_path):
    _yaml(tmp_path, "name: a\nmixtures: [{path: b.yaml, weight: 1}]\n", "a.yaml")
    _yaml(tmp_path, "name: b\nmixtures: [{path: c.yaml}]\n", "b.yaml")
    _yaml(tmp_path, "name: c\nmixtures: [{path: a.yaml}]\n", "c.yaml")
    with pytest.raises(ConfigError) as e:
        load_mixture(tmp_path / "a.yaml")
    msg = _error(e)
    assert "cycle" in msg and "a.yaml -> " in msg and "b.yaml -> " in msg and "c.yaml -> " in msg


def test_nested_mixture_not_found(tmp_path):
    with pytest.raises(ConfigError, match=r"mixtures\[0\]\.path"):
        load_mixture(_yaml(tmp_path, GOOD + "mixtures: [{path: nope.yaml}]\n"))


def test_held_out_guard_lists_the_tasks(tmp_path):
    # without `split`, every task file is a candidate: the sample's 12 test tasks are in it
    path = _yaml(tmp_path, GOOD.replace("    split: default\n", ""))
    with pytest.raises(HeldOutError) as e:
        plan_mixture(load_mixture(path))
    msg = _error(e)
    assert "12 held-out task(s)" in msg and "task199_mnli_classification" in msg and "held_out.allow" in msg


def test_held_out_guard_explicit_override(tmp_path):
    path = _yaml(tmp_path, GOOD.replace("    split: default\n", "") + "held_out: {allow: true}\n")
    plan = plan_mixture(load_mixture(path))
    assert len(plan.summary()["held_out"]["in_mixture"]) == 12
    assert "task199_mnli_classification" in plan.held_out


def test_held_out_extra_tasks(tmp_path):
    path = _yaml(tmp_path, GOOD + "held_out: {tasks: [task1146_country_capital]}\n")
    with pytest.raises(HeldOutError, match="task1146_country_capital"):
        plan_mixture(load_mixture(path))


def test_shipped_mixtures_load(repo_root):
    folder = repo_root / "data_mixtures"
    for name in ("superni_sample", "temperature_nested"):
        plan = plan_mixture(load_mixture(folder / f"{name}.yaml"))
        assert len(plan) > 0 and not plan.summary()["held_out"]["in_mixture"]
    spec = load_mixture(folder / "superni_default.yaml")
    assert spec.max_instances_per_task == 100 and spec.sources[0].encoding.pos_examples == 2
    assert spec.epochs == 2
    for path in folder.glob("*.yaml"):
        assert path.read_text().startswith("# "), f"{path.name} needs a header comment"


def test_two_sources_with_a_jsonl_file_relative_to_the_yaml(tmp_path):
    lines = [{"task": "my_upper", "definition": "Write the input in capitals."}]
    lines += [{"task": "my_upper", "input": w, "output": w.upper()} for w in ("cat", "dog", "owl", "elk")]
    lines += [{"task": "my_reverse", "definition": "Reverse the word.", "input": "abc", "output": "cba"}]
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.jsonl").write_text("\n".join(__import__("json").dumps(x) for x in lines) + "\n")
    path = _yaml(tmp_path, GOOD + "    tasks: {include: [task1146_country_capital]}\n"
                 "  - {name: mine, type: jsonl, path: data/mine.jsonl, weight: 3.0}\n")
    plan = plan_mixture(load_mixture(path))
    by_source = {t.name: t.source for t in plan.tasks}
    assert by_source == {"task1146_country_capital": "superni", "my_upper": "mine", "my_reverse": "mine"}
    examples = [e for e in plan.iter_examples() if e["source"] == "mine"]
    assert examples and all(e["prompt"].startswith("Definition: ") for e in examples)
    assert {e["completion"] for e in examples if e["task"] == "my_upper"} <= {"CAT", "DOG", "OWL", "ELK"}


def test_missing_collection_path_points_at_the_field_and_the_flag(repo_root, tmp_path):
    spec = load_mixture(repo_root / "data_mixtures" / "superni_default.yaml")
    with pytest.raises(ConfigError) as e:
        plan_mixture(spec)
    assert "superni_default.yaml" in _error(e) and "sources[0].path" in _error(e) and "--collection" in _error(e)


def test_tasks_missing_from_the_collection_are_reported_once_naming_the_file(repo_root, caplog, monkeypatch):
    import logging

    from mixtune.mixtures import selection

    monkeypatch.setattr(selection, "_SAID", set())
    caplog.set_level(logging.INFO, logger="mixtune")
    path = repo_root / "data_mixtures" / "quickstart.yaml"  # two sources over the same split
    for _ in range(2):  # e.g. `mixture show` and then `train` in one process
        plan_mixture(load_mixture(path))
    said = [r.getMessage() for r in caplog.records if "train task(s) of split" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{path.resolve()}: skipping 696 train task(s) of split 'default'")
