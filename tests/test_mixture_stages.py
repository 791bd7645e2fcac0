"""Staged mixtures (curricula): each stage owns a fixed range of positions, a pure function of (mixture, seed,
position); `mixture show` prints every stage and `mixture build` writes them in order."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from conftest import TINY_RECIPE

from mixtune.cli import main
from mixtune.errors import ConfigError
from mixtune.mixtures import load_mixture, plan_mixture

SOURCE = """
      - name: superni
        path: bundled
        split: default
        missing_tasks: skip
        tasks: {{{tasks}}}"""
TWO_STAGES = f"""
name: curriculum
seed: 3
total_examples: 500
max_instances_per_task: 20
stages:
  - fraction: 0.3
    sources:{SOURCE.format(tasks='include: ["*classification*"]')}
  - fraction: 0.7
    temperature: 3.0
    sources:{SOURCE.format(tasks='exclude: ["*classification*"]')}
"""


def _plan(tmp_path, text=TWO_STAGES, overrides=()):
    path = tmp_path / "curriculum.yaml"
    path.write_text(text)
    return plan_mixture(load_mixture(path, overrides=list(overrides)))


def test_two_stage_build_holds_stage_one_tasks_first_then_stage_two(tmp_path):
    plan = _plan(tmp_path)
    assert [(s.name, s.start, s.stop) for s in plan.stages] == [("stage1", 0, 150), ("stage2", 150, 500)]
    assert main(["mixture", "build", str(tmp_path / "curriculum.yaml"), "--out", str(tmp_path / "built")]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "built"))
    assert json.loads((tmp_path / "built" / "mixture_manifest.json").read_text())["hash"] == plan.hash
    assert ds["position"] == list(range(500))
    first, second = set(ds["task"][:150]), set(ds["task"][150:])
    assert first and all("classification" in t for t in first)
    assert second and not any("classification" in t for t in second)
    assert abs(sum(t.rate for t in plan.tasks) - 1) < 1e-9


def test_a_stage_is_a_pure_function_of_mixture_seed_and_position(tmp_path):
    """Planning twice gives the same index; changing stage two leaves stage one's positions alone; another
    seed changes them."""
    one, two = _plan(tmp_path), _plan(tmp_path)
    assert np.array_equal(one.index.task_ids, two.index.task_ids) and np.array_equal(one.index.rows, two.index.rows)
    assert one.example(420) == two.example(420)
    other_stage_two = _plan(tmp_path, TWO_STAGES.replace("temperature: 3.0", "temperature: 1.0"))
    names = lambda plan, a, b: [plan.tasks[int(k)].name for k in plan.index.task_ids[a:b]]  # noqa: E731
    assert names(one, 0, 150) == names(other_stage_two, 0, 150)
    assert names(one, 150, 500) != names(other_stage_two, 150, 500)
    assert one.hash != other_stage_two.hash
    assert names(one, 0, 150) != names(_plan(tmp_path, overrides=["seed=4"]), 0, 150)


def test_stages_given_in_examples_set_the_length(tmp_path):
    text = TWO_STAGES.replace("total_examples: 500\n", "").replace("fraction: 0.3", "examples: 40") \
        .replace("fraction: 0.7", "examples: 60")
    plan = _plan(tmp_path, text)
    assert len(plan) == 100 and [(s.start, s.stop) for s in plan.stages] == [(0, 40), (40, 100)]


def test_show_prints_each_stage(tmp_path, capsys):
    path = tmp_path / "curriculum.yaml"
    path.write_text(TWO_STAGES)
    assert main(["mixture", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stage1: positions 0..149 (150 examples" in out and "stage2: positions 150..499 (350 examples" in out


@pytest.mark.parametrize("change, words", [
    (("fraction: 0.7", "fraction: 0.5"), "add up to 0.8"),
    (("fraction: 0.7", "examples: 50"), "not a mix"),
    (("stages:", "sources: []\nmixtures: [{path: x.yaml}]\nstages:"), "inside `stages`"),
    (("fraction: 0.3\n", "fraction: 0.3\n    epochs: 2\n"), "stages[0].epochs"),
])
def test_bad_stages_are_errors_naming_the_field(tmp_path, change, words):
    path = tmp_path / "curriculum.yaml"
    path.write_text(TWO_STAGES.replace(*change))
    with pytest.raises(ConfigError) as e:
        load_mixture(path)
    assert "curriculum.yaml" in str(e.value) and words in str(e.value)


@pytest.mark.integration
def test_a_run_resumed_inside_stage_two_ends_like_the_straight_run(tmp_path):
    """Tiny causal training over a two-stage mixture (stage one: steps 1-2): resumed from the step-3
    checkpoint, the run ends with the straight run's parameters and logs the same step-4 task losses."""
    import shutil

    import torch
    import yaml
    from safetensors.torch import load_file

    from mixtune.recipe import load_recipe
    from mixtune.train.run import run_training
    from mixtune.train.task_losses import read_losses

    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    text = TWO_STAGES.replace("fraction: 0.3", "examples: 8").replace("fraction: 0.7", "examples: 56")
    recipe["data"]["mixture"] = yaml.safe_load(text.replace("total_examples: 500\n", ""))
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(recipe))
    settings = ["training.max_steps=4", "training.save_steps=1", "training.logging_steps=1", "data.max_length=64"]
    straight = tmp_path / "straight"
    run_training(load_recipe(path, [*settings, f"output_dir={straight}"]))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(load_recipe(path, [*settings, f"output_dir={resumed}"]))
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = read_losses(straight)
    assert all("classification" in t for line in lines[:2] for t in line["per_task"])
    assert not any("classification" in t for line in lines[2:] for t in line["per_task"])
    assert read_losses(resumed) == [lines[3]]
