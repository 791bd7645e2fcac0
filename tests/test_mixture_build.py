"""`build_mixture` and the `mixtune mixture show|build` commands, on the bundled sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import pytest

from mixtune.cli import main
from mixtune.errors import DataError
from mixtune.mixtures import COLUMNS, build_mixture, load_mixture, plan_mixture

MIX = """
name: small
seed: 5
total_examples: 400
temperature: 2.0
max_instances_per_task: 20
sources:
  - name: superni
    path: {path}
    split: default
    missing_tasks: skip
    encoding: {{pos_examples: 2}}
"""


def _mixture(tmp_path, path="bundled"):
    file = tmp_path / "small.yaml"
    file.write_text(MIX.format(path=path))
    return file


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_is_byte_for_byte_reproducible(tmp_path):
    mixture = _mixture(tmp_path)
    one = build_mixture(plan_mixture(load_mixture(mixture)), tmp_path / "one")
    two = build_mixture(plan_mixture(load_mixture(mixture)), tmp_path / "two")
    files = _files(one)
    assert {"state.json", "dataset_info.json", "mixture_manifest.json"} <= set(files)
    assert files == _files(two)
    other = build_mixture(plan_mixture(load_mixture(mixture, overrides=["seed=6"])), tmp_path / "other")
    ds, ds_other = datasets.load_from_disk(str(one)), datasets.load_from_disk(str(other))
    assert ds.column_names == list(COLUMNS) and len(ds) == 400
    assert ds["task"] != ds_other["task"]
    assert sorted(ds["task"]) == sorted(ds_other["task"])  # same realised counts, another order
    plan = plan_mixture(load_mixture(mixture))
    assert ds.to_list() == list(plan.iter_examples())
    manifest = json.loads(files["mixture_manifest.json"])
    assert manifest["hash"] == plan.hash and manifest["total_examples"] == 400
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or partial folders


def test_failure_leaves_no_output_folder(tmp_path):
    collection = tmp_path / "superni"
    shutil.copytree(_bundled(), collection)
    cache = tmp_path / "cache"
    plan = plan_mixture(load_mixture(_mixture(tmp_path, path=str(collection))), cache_dir=str(cache))
    # after planning, one task file turns into bad JSON and its cached instances are gone
    victim = plan.tasks[len(plan.tasks) // 2].name
    (collection / "tasks" / f"{victim}.json").write_text('{"Definition": ["x"], "Instances": [')
    shutil.rmtree(cache)
    out = tmp_path / "out"
    with pytest.raises(DataError):
        build_mixture(plan, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or partial folders


def _bundled():
    from mixtune.tasks.collection import bundled_path

    return bundled_path()


def test_show_json_schema(tmp_path, capsys):
    assert main(["mixture", "show", str(_mixture(tmp_path)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_examples"] == 400 and len(summary["hash"]) == 16
    task_keys = {"name", "source", "category", "num_instances", "cap", "rate", "expected_examples"}
    assert all(task_keys <= set(t) for t in summary["tasks"])
    assert sum(t["rate"] for t in summary["tasks"]) == pytest.approx(1.0)
    assert sum(t["realised_examples"] for t in summary["tasks"]) == 400
    assert all(t["cap"] == 20 for t in summary["tasks"])
    assert {g["name"] for g in summary["sources"]} == {"superni"}
    assert sum(g["expected_examples"] for g in summary["categories"]) == pytest.approx(400)


def test_show_table_and_plot(tmp_path, capsys):
    png = tmp_path / "rates.png"
    assert main(["mixture", "show", str(_mixture(tmp_path)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "mixture hash" in out and "per category" in out and "per source" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_table_never_cuts_a_task_name_in_a_narrow_pipe(repo_root):
    mixture = str(repo_root / "data_mixtures" / "quickstart.yaml")
    env = {**os.environ, "COLUMNS": "80"}
    shown = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show", mixture], capture_output=True,
                           text=True, timeout=300, env=env, check=True).stdout
    as_json = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show", mixture, "--json"],
                             capture_output=True, text=True, timeout=300, env=env, check=True).stdout
    names = {t["name"] for t in json.loads(as_json)["tasks"]}
    assert "…" not in shown and len(names) == 60
    assert all(f"│ {name} " in shown for name in names)
    assert "mixture 'quickstart': 60 tasks × 2 encodings, 5072 examples" in shown  # not "120 tasks"


def test_cli_build_and_collection_flag_in_a_real_process(tmp_path, repo_root):
    out = tmp_path / "built"
    copy = tmp_path / "copy"
    shutil.copytree(_bundled(), copy)
    run = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "build",
                          str(repo_root / "data_mixtures" / "temperature_nested.yaml"), "--out", str(out),
                          "--collection", str(copy)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3000 and set(ds["source"]) == {"superni", "classification/superni"}
    # the default-split mixture on the sample: the split names tasks the sample lacks -> exit 2, clear error
    bad = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show",
                          str(repo_root / "data_mixtures" / "superni_default.yaml"), "--collection", "bundled"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing_tasks" in bad.stderr and "superni_default.yaml" in bad.stderr


def test_build_error_leaves_no_out_folder_via_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MIX.format(path="bundled").replace("split: default\n", ""))  # would train on test tasks
    out = tmp_path / "out"
    assert main(["mixture", "build", str(bad), "--out", str(out)]) == 2
    assert not out.exists()
