"""Recipes: validation errors naming file and field, overrides, path resolution, DeepSpeed presets, launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_RECIPE

from mixtune.errors import ConfigError
from mixtune.recipe import load_recipe
from mixtune.train.deepspeed import PRESETS, deepspeed_config, zero_stage
from mixtune.train.launch import launch_command
from mixtune.train.spec import DEEPSPEED_PRESETS


def _write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _minimal(**extra) -> dict:
    data = {"model": {"config": {"model_type": "llama", "hidden_size": 32}},
            "data": {"mixture": "mix.yaml"}, "output_dir": "out"}
    data.update(extra)
    return data


def test_bundled_recipes_validate() -> None:
    for name in ("tiny_causal.yaml", "tiny_seq2seq.yaml"):
        recipe = load_recipe(REPO / "recipes" / name)
        assert recipe.source == str(REPO / "recipes" / name)
        assert recipe.training.max_steps and recipe.logging.wandb == "disabled"


def test_defaults_and_relative_mixture_path(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, _minimal()))
    assert recipe.data.mixture == str(tmp_path / "mix.yaml")
    assert recipe.resume == "auto" and recipe.logging.wandb == "offline"
    assert recipe.training.learning_rate == 1e-4 and recipe.distributed.deepspeed is None


def test_overrides_beat_yaml_and_parse_values(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(training={"learning_rate": 0.1, "max_steps": 5}))
    recipe = load_recipe(path, ["training.learning_rate=1e-4", "training.max_steps=7", "logging.run_name=sweep-1",
                                "data.packing=true", "data.max_length=64", "resume=never"])
    assert recipe.training.learning_rate == pytest.approx(1e-4)
    assert recipe.training.max_steps == 7
    assert recipe.logging.run_name == "sweep-1"
    assert recipe.data.packing is True and recipe.resume == "never"


def test_unknown_key_names_file_field_and_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(training={"learning_rat": 1e-3}))
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    text = str(e.value)
    assert str(path) in text and "training.learning_rat" in text and "did you mean 'learning_rate'" in text


def test_unknown_override_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'per_device_batch_size'"):
        load_recipe(TINY_RECIPE, ["training.per_device_batchsize=4"])


def test_wrong_type_from_an_override_names_the_command_line() -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY_RECIPE, ["training.max_steps=many"])
    text = str(e.value)
    assert "command-line override 'training.max_steps=many'" in text and "field 'training.max_steps'" in text
    assert "tiny_causal.yaml" not in text  # the file is fine: the command line is not


def test_override_typo_names_the_command_line_and_a_file_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command-line override 'traning.max_steps=3': field 'traning': "
                                          r"unknown key \(did you mean 'training'\?\)"):
        load_recipe(TINY_RECIPE, ["traning.max_steps=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RECIPE.read_text().replace("max_steps:", "max_step:"))
    with pytest.raises(ConfigError, match=f"^{bad}: field 'training.max_step'"):
        load_recipe(bad, ["training.learning_rate=1e-4"])


def test_unknown_preset_message_reads_as_a_sentence() -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY_RECIPE, ["distributed.deepspeed=zero4"])
    text = str(e.value)
    assert "unknown DeepSpeed preset 'zero4' (did you mean 'zero3' or 'zero2'?); give a preset (zero2, zero3, " \
           "zero3_offload) or a path to a .json file" in text
    assert "?," not in text and "Value error" not in text


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(TINY_RECIPE, ["training.max_steps"])


def test_bad_deepspeed_preset_suggests_a_preset() -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY_RECIPE, ["distributed.deepspeed=zero4"])
    assert "distributed.deepspeed" in str(e.value) and "zero3" in str(e.value)


def test_deepspeed_json_path_resolves_against_recipe(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}), encoding="utf-8")
    recipe = load_recipe(_write(tmp_path, _minimal(distributed={"deepspeed": "ds.json"})))
    assert recipe.distributed.deepspeed == str(tmp_path / "ds.json")
    assert zero_stage(deepspeed_config(recipe.distributed.deepspeed)) == 2
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(_write(tmp_path, _minimal(distributed={"deepspeed": "missing.json"}), "r2.yaml"))


def test_packing_needs_max_length(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_length"):
        load_recipe(_write(tmp_path, _minimal(data={"mixture": "m.yaml", "packing": True})))


def test_model_section_errors_come_from_model_config(tmp_path: Path) -> None:
    data = _minimal()
    data["model"] = {"name_or_path": "x", "config": {"model_type": "llama"}}
    with pytest.raises(ConfigError, match="exactly one"):
        load_recipe(_write(tmp_path, data))


def test_preset_files_equal_the_canonical_presets() -> None:
    folder = REPO / "recipes" / "deepspeed"
    files = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
    assert files == PRESETS
    assert tuple(PRESETS) == DEEPSPEED_PRESETS  # the names recipe validation accepts (train/spec.py)
    assert zero_stage(PRESETS["zero2"]) == 2 and zero_stage(PRESETS["zero3"]) == 3
    assert PRESETS["zero3"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert PRESETS["zero3_offload"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_print_launch_commands() -> None:
    one = load_recipe(TINY_RECIPE)
    assert launch_command(one, "r.yaml") == "mixtune train r.yaml"
    acc = load_recipe(TINY_RECIPE, ["distributed.processes_per_node=8"])
    assert launch_command(acc, "r.yaml", ["training.max_steps=5"]) == \
        "accelerate launch --num_processes 8 -m mixtune train r.yaml training.max_steps=5"
    multi = load_recipe(TINY_RECIPE, ["distributed.processes_per_node=8", "distributed.nodes=2"])
    cmd = launch_command(multi, "r.yaml")
    assert "--num_processes 16 --num_machines 2 --machine_rank $NODE_RANK" in cmd
    ds = load_recipe(TINY_RECIPE, ["distributed.processes_per_node=4", "distributed.nodes=2",
                                   "distributed.launcher=deepspeed"])
    assert launch_command(ds, "r.yaml") == ("deepspeed --hostfile hostfile --num_nodes 2 --num_gpus 4 --no_local_rank "
                                            "--module mixtune train r.yaml")
    tr = load_recipe(TINY_RECIPE, ["distributed.processes_per_node=4", "distributed.launcher=torchrun"])
    assert launch_command(tr, "r.yaml") == "torchrun --nproc_per_node 4 -m mixtune train r.yaml"


def test_cli_print_launch(capsys: pytest.CaptureFixture[str]) -> None:
    from mixtune.cli import main

    assert main(["train", str(TINY_RECIPE), "distributed.processes_per_node=2", "--print-launch"]) == 0
    assert capsys.readouterr().out.strip().startswith("accelerate launch --num_processes 2 -m mixtune train")
    # the local rank argument deepspeed's launcher passes before the subcommand is accepted
    assert main(["--local_rank=0", "train", str(TINY_RECIPE), "--print-launch"]) == 0


def test_cli_reports_recipe_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from mixtune.cli import main

    assert main(["train", str(TINY_RECIPE), "training.epohcs=2"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


@pytest.mark.integration
def test_accelerate_launch_without_use_deepspeed_on_cpu_says_how_to_launch(tmp_path: Path) -> None:
    """On a CPU-only machine `accelerate launch --num_processes 2` (no --use_deepspeed) starts one plain
    process; with a DeepSpeed recipe that process would die in DeepSpeed's MPI discovery (mpi4py)."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU-only launch path")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m", "mixtune", "train",
           str(TINY_RECIPE), "distributed.deepspeed=zero2", "training.max_steps=1", f"output_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "mpi4py" not in done.stderr
    assert "DeepSpeed on a CPU-only machine needs processes started by `accelerate launch --use_deepspeed` or " \
           "`torchrun`; `accelerate launch` without --use_deepspeed starts one plain process there" in done.stderr
    assert not (tmp_path / "run" / "final").exists()
