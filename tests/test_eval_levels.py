"""The three generalisation levels of OPT-IML Bench, checked against a membership computed here from the
task files and the planned mixture's own pools (not from mixtune.eval.levels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from official_scorer import items_from_records, official_scores

from mixtune.eval.runner import run_eval
from mixtune.eval.spec import EvalSpec
from mixtune.mixtures.plan import plan_mixture
from mixtune.mixtures.spec import load_mixture

# trained on: two Sentiment Analysis tasks and one Misc. task, each capped at 10 of its instances
TRAINED = ["task195_sentiment140_classification", "task363_sst2_polarity_classification", "task1146_country_capital"]
# evaluated: a Sentiment Analysis task the mixture lacks (unseen task), a Misc. one (unseen task), and two
# tasks of categories the mixture never saw (unseen category)
EVALUATED = ["task833_poem_sentiment_classification", "task1191_food_veg_nonveg", "task199_mnli_classification",
             "task1390_wscfixed_coreference"]
MIXTURE = {"name": "levels", "seed": 7, "max_instances_per_task": 10, "epochs": 1,
           "sources": [{"name": "s", "type": "superni", "path": "bundled", "split": "default",
                        "missing_tasks": "skip", "tasks": {"include": TRAINED}}]}
PER_TASK = 3


def _task_file(bundled_dir: Path, task: str) -> dict:
    return json.loads((bundled_dir / "tasks" / f"{task}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def trained_model(tiny_llama_dir, tmp_path_factory):
    """A model folder holding the mixtune_run.json that `mixtune train` writes (its `mixture`: the plan summary)."""
    plan = plan_mixture(load_mixture(MIXTURE))
    folder = tmp_path_factory.mktemp("trained") / "final"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "mixtune_run.json").write_text(json.dumps({"mixture": plan.summary(), "mixture_hash": plan.hash}))
    return folder, plan


def _expected(bundled_dir: Path, plan) -> dict:
    """Membership by hand: categories from the task files, unseen rows from the plan's own pools."""
    trained_categories = {_task_file(bundled_dir, t.name)["Categories"][0] for t in plan.tasks}
    levels = {"unseen_category": [], "unseen_task": []}
    for task in sorted(EVALUATED):
        category = _task_file(bundled_dir, task)["Categories"][0]
        levels["unseen_task" if category in trained_categories else "unseen_category"].append(task)
    unseen = {}
    for t in plan.tasks:
        instances = _task_file(bundled_dir, t.name)["Instances"]
        pool = set(t.pool.tolist())
        assert len(pool) == 10 < len(instances)
        unseen[t.name] = [inst["id"] for row, inst in enumerate(instances) if row not in pool][:PER_TASK]
    return {**levels, "unseen_instance": unseen}


@pytest.mark.integration
def test_levels_membership_and_scores(trained_model, bundled_dir, tmp_path):
    folder, plan = trained_model
    spec = EvalSpec(tasks=EVALUATED, max_instances_per_task=2, settings=["zero_shot"], max_new_tokens=3,
                    batch_size=8, max_source_length=128, unseen_instances_per_task=PER_TASK)
    out = tmp_path / "eval"
    metrics = run_eval(folder, spec, out, baselines=False, progress=False)
    expected = _expected(bundled_dir, plan)
    assert expected["unseen_task"] == ["task1191_food_veg_nonveg", "task833_poem_sentiment_classification"]
    levels = json.loads((out / "metrics.json").read_text())["levels"]
    assert levels == json.loads(json.dumps(metrics["levels"]))
    assert set(levels) == {"unseen_category", "unseen_task", "unseen_instance"}
    primary = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for level in ("unseen_category", "unseen_task"):
        assert levels[level]["tasks"] == expected[level]
        chosen = [r for r in primary if r["Task"] in expected[level]]
        assert levels[level]["num_instances"] == len(chosen) == 2 * len(expected[level])
        overall = official_scores(items_from_records(chosen))["overall"]  # the official formula, independently
        assert levels[level]["exact_match"] == pytest.approx(overall["exact_match"], abs=1e-4)
        assert levels[level]["rougeL"] == pytest.approx(overall["rougeL"], abs=1e-4)
    unseen = [json.loads(x) for x in (out / "predictions.unseen_instance.jsonl").read_text().splitlines()]
    got: dict[str, list[str]] = {}
    for r in unseen:
        got.setdefault(r["Task"], []).append(r["Instance"]["id"])
    assert got == expected["unseen_instance"]
    assert levels["unseen_instance"]["tasks"] == sorted(TRAINED)
    assert levels["unseen_instance"]["num_instances"] == 3 * PER_TASK
    assert levels["unseen_instance"]["rougeL"] == pytest.approx(
        official_scores(items_from_records(unseen))["overall"]["rougeL"], abs=1e-4)
    report = (out / "report.md").read_text()
    assert "## Generalisation levels" in report and "| unseen_task |" in report

    # a model trained elsewhere: the same levels from --mixture (a mixture YAML), planned here
    import yaml

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "mixtune_run.json").unlink()
    mixture_file = tmp_path / "levels.yaml"
    mixture_file.write_text(yaml.safe_dump(MIXTURE))
    plain = run_eval(bare, spec, tmp_path / "plain", baselines=False, progress=False)
    assert plain["levels"] == {}
    again = run_eval(bare, spec.model_copy(update={"mixture": str(mixture_file)}), tmp_path / "elsewhere",
                     baselines=False, progress=False)
    assert {k: v["tasks"] for k, v in again["levels"].items()} == {k: v["tasks"] for k, v in metrics["levels"].items()}
    assert again["levels"]["unseen_instance"]["num_instances"] == 3 * PER_TASK
