"""Instruction-sensitivity controls and the random_label baseline, checked against the task files read here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from official_scorer import items_from_records, official_scores

from mixtune.cli import main
from mixtune.eval.baselines import iter_baseline_records
from mixtune.eval.evalsets import build_eval_set
from mixtune.eval.predictions import read_predictions
from mixtune.tasks.collection import open_collection

TASKS = ["task199_mnli_classification", "task1390_wscfixed_coreference", "task288_gigaword_summarization",
         "task828_copa_commonsense_cause_effect"]


@pytest.fixture(scope="module")
def collection(bundled_dir):
    return open_collection(path=bundled_dir)


def _file(bundled_dir: Path, task: str) -> dict:
    return json.loads((bundled_dir / "tasks" / f"{task}.json").read_text(encoding="utf-8"))


def _labels(task: dict, limit: int = 10) -> list[str] | None:
    """The observed outputs (instances and positive examples), when there are at most `limit`."""
    found = {o.strip() for inst in task["Instances"] for o in inst["output"]}
    found |= {d["output"].strip() for d in task["Positive Examples"]}
    return sorted(found) if len(found) <= limit else None


def _build(collection, setting: str, seed: int = 0) -> dict[str, list[dict]]:
    records = build_eval_set(collection, max_instances=2, setting=setting, tasks=TASKS, seed=seed)
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["Task"], []).append(r)
    return by_task


def test_shuffled_definition_shows_another_tasks_definition(collection, bundled_dir):
    definitions = {t: _file(bundled_dir, t)["Definition"][0].strip() for t in TASKS}
    shown = {}
    for task, records in _build(collection, "shuffled_definition").items():
        prompt = records[0]["prompt"]
        donors = [t for t, d in definitions.items() if f"Definition: {d}" in prompt]
        assert len(donors) == 1 and donors[0] != task, task
        assert "Positive Example" not in prompt
        shown[task] = donors[0]
    assert sorted(shown.values()) == sorted(TASKS)  # a permutation: every definition used once
    assert {t: r[0]["prompt"] for t, r in _build(collection, "shuffled_definition").items()} == \
        {t: r[0]["prompt"] for t, r in _build(collection, "shuffled_definition", seed=0).items()}


def test_delusive_pos2_swaps_demonstration_outputs_within_the_label_space(collection, bundled_dir):
    for task, records in _build(collection, "delusive_pos2").items():
        raw = _file(bundled_dir, task)
        prompt = records[0]["prompt"]
        assert raw["Definition"][0].strip() in prompt and "Positive Example 2" in prompt
        labels = _labels(raw)
        for k, demo in enumerate(raw["Positive Examples"][:2], start=1):
            block = prompt.split(f"Positive Example {k} -")[1]
            shown = block.split(" Output: ")[1].split("\n")[0].strip()
            assert shown.rstrip(".") != demo["output"].strip().rstrip("."), (task, k)
            if labels is not None:
                assert shown.rstrip(".") in {x.rstrip(".") for x in labels}, (task, shown)


def test_output_space_only_lists_the_labels_of_small_label_set_tasks(collection, bundled_dir):
    by_task = _build(collection, "output_space_only")
    expected = {t: lab for t in TASKS if (lab := _labels(_file(bundled_dir, t)))}
    assert set(by_task) == set(expected) and "task288_gigaword_summarization" not in by_task
    for task, labels in expected.items():
        prompt = by_task[task][0]["prompt"]
        sentence = "Answer with one of the following: " + ", ".join(f'"{x}"' for x in labels) + "."
        assert prompt.startswith(f"Definition: {sentence}\n\n") and "Positive Example" not in prompt


def test_random_label_baseline(collection, bundled_dir, tmp_path, capsys):
    records = list(iter_baseline_records(collection, "random_label", tasks=TASKS, seed=3))
    again = list(iter_baseline_records(collection, "random_label", tasks=TASKS, seed=3))
    other = list(iter_baseline_records(collection, "random_label", tasks=TASKS, seed=4))
    assert records == again and records != other
    picks: dict[str, set[str]] = {}
    for r in records:
        labels = _labels(_file(bundled_dir, r["Task"]))
        if labels is None:
            assert r["prediction"] == r["Instance"]["input"]  # no small label set: copy_input
        else:
            assert r["prediction"] in labels
            picks.setdefault(r["Task"], set()).add(r["prediction"])
    assert all(len(p) > 1 for p in picks.values())  # a draw, not a constant
    out = tmp_path / "random.jsonl"
    assert main(["eval", "baseline", "--method", "random_label", "--tasks", ",".join(TASKS), "--seed", "3",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert read_predictions(out) == records


def test_controls_in_metrics_and_report(tiny_llama_dir, collection, tmp_path):
    from mixtune.eval.runner import run_eval
    from mixtune.eval.spec import EvalSpec

    spec = EvalSpec(tasks=TASKS, max_instances_per_task=2, max_new_tokens=3, batch_size=8, max_source_length=192,
                    settings=["def_pos2", "shuffled_definition", "delusive_pos2", "output_space_only"])
    metrics = run_eval(tiny_llama_dir, spec, tmp_path / "eval", collection=collection, progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["schema_version"] == 1
    only = saved["settings"]["output_space_only"]
    assert only["control"]["tasks"] == sorted(t for t in TASKS if t != "task288_gigaword_summarization")
    assert only["num_instances"]["overall"] == 6
    primary = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    same = official_scores(items_from_records([r for r in primary if r["Task"] in only["control"]["tasks"]]))["overall"]
    assert only["control"]["primary_on_same_tasks"] == pytest.approx({"num_instances": 6, **same}, abs=1e-4)
    report = (tmp_path / "eval" / "report.md").read_text()
    section = report.split("## Instruction-sensitivity controls")[1]
    for label in ("shuffled_definition", "delusive_pos2", "output_space_only", "random_label"):
        line = next(x for x in section.splitlines() if x.startswith(f"- **{label}**"))
        assert "from the primary setting def_pos2" in line
    diff = metrics["settings"]["delusive_pos2"]["overall"]["rougeL"] - metrics["overall"]["rougeL"]
    assert f"{diff:+.2f} ROUGE-L" in section
    assert saved["baselines"]["random_label"]["control"]["tasks"] == sorted(TASKS)
