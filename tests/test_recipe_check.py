"""`mixtune recipe check`: shipped recipes pass, broken ones fail naming file and field, nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_RECIPE

from mixtune.cli import main
from mixtune.recipe_cli import check_recipe

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
GPU_RECIPES = [REPO / "recipes" / n for n in
               ("tk_instruct_3b.yaml", "llama31_8b_zero3.yaml", "llama31_8b_lora.yaml", "multinode_zero3.yaml")]


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every transformers/peft loading entry point fail loudly if the check reaches it."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"recipe check loaded a model/tokenizer/config: {args[:2]}")

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                transformers.AutoModelForSeq2SeqLM, transformers.PreTrainedModel,
                transformers.PreTrainedTokenizerBase):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _tiny_recipe(mixture: object, **extra: object) -> dict:
    recipe = yaml.safe_load((TINY_RECIPE).read_text(encoding="utf-8"))
    recipe["data"]["mixture"] = mixture
    recipe.update(extra)
    return recipe


def test_all_shipped_recipes_pass(no_model_loading, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no natural-instructions checkout here: GPU recipes skip planning
    rc = main(["recipe", "check", *map(str, RECIPES)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0, out
    lines = {Path(line.split()[1].rstrip(":")).name: line for line in out if line.startswith(("OK", "FAIL"))}
    assert set(lines) == {p.name for p in RECIPES}
    assert all(line.startswith("OK") for line in lines.values()), out
    for path in GPU_RECIPES:
        assert "collection not present (natural-instructions), skipped planning" in lines[path.name]
    # recipes on the bundled sample are planned: their line carries the example and step counts
    assert "512 examples from 60 tasks, 8 steps of 4 examples" in lines["tiny_causal.yaml"]
    assert out[-1] == f"{len(RECIPES)} of {len(RECIPES)} recipes OK"


def test_gpu_recipes_import_neither_torch_nor_transformers(tmp_path) -> None:
    """Checking the hub-model recipes touches no model code at all, and writes nothing to the hub cache."""
    hf_home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "MIXTUNE_CACHE": str(tmp_path / "mc")}
    code = ("import sys, json; from mixtune.cli import main; "
            f"rc = main(['recipe', 'check', *{[str(p) for p in GPU_RECIPES]!r}]); "
            "print(json.dumps([rc, 'torch' in sys.modules, 'transformers' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, torch_loaded, transformers_loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and not torch_loaded and not transformers_loaded, proc.stdout
    assert not hf_home.exists() or not any(p.is_file() for p in hf_home.rglob("*"))


def test_unknown_key_names_file_and_field(tmp_path, capsys) -> None:
    recipe = _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix())
    recipe["training"]["learning_rat"] = 1e-4
    path = _write(tmp_path, "typo.yaml", recipe)
    rc = main(["recipe", "check", str(path)])
    line = capsys.readouterr().out.strip()
    assert rc == 1
    assert line.startswith("FAIL") and str(path) in line
    assert "field 'training.learning_rat'" in line and "unknown key" in line and "learning_rate" in line


def test_bad_deepspeed_preset_names_field(tmp_path) -> None:
    recipe = _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix(),
                          distributed={"deepspeed": "zero4"})
    result = check_recipe(_write(tmp_path, "ds.yaml", recipe))
    assert not result.ok
    assert "field 'distributed.deepspeed'" in result.error and "zero4" in result.error
    assert "ds.yaml" in result.error


def test_deepspeed_json_with_bad_stage_fails(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 7}}), encoding="utf-8")
    recipe = _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix(),
                          distributed={"deepspeed": "ds.json"})
    result = check_recipe(_write(tmp_path, "r.yaml", recipe))
    assert not result.ok and "field 'distributed.deepspeed'" in result.error and "stage" in result.error


def test_missing_mixture_file_names_field(tmp_path) -> None:
    path = _write(tmp_path, "nomix.yaml", _tiny_recipe("../data_mixtures/does_not_exist.yaml"))
    result = check_recipe(path)
    assert not result.ok
    assert str(path) in result.error and "field 'data.mixture'" in result.error
    assert "does_not_exist.yaml" in result.error


def test_broken_mixture_names_recipe_and_mixture_field(tmp_path) -> None:
    mixture = yaml.safe_load((REPO / "data_mixtures" / "superni_sample.yaml").read_text(encoding="utf-8"))
    mixture["sources"][0]["encoding"]["pos_exampels"] = 2
    _write(tmp_path, "mix.yaml", mixture)
    result = check_recipe(_write(tmp_path, "r.yaml", _tiny_recipe("mix.yaml")))
    assert not result.ok
    assert "r.yaml" in result.error and "field 'data.mixture'" in result.error
    assert "mix.yaml" in result.error and "sources[0].encoding.pos_exampels" in result.error


def test_held_out_task_in_mixture_fails_when_planned(tmp_path) -> None:
    inline = {"name": "leak", "seed": 0, "total_examples": 50,
              "sources": [{"name": "superni", "path": "bundled",
                           "tasks": {"include": ["task020_mctaco_span_based_question"]}}]}
    test_tasks = (REPO / "mixtune/data/superni/splits/default/test_tasks.txt").read_text().split()
    assert "task020_mctaco_span_based_question" in test_tasks
    result = check_recipe(_write(tmp_path, "r.yaml", _tiny_recipe(inline)))
    assert not result.ok and "held-out" in result.error and "task020_mctaco_span_based_question" in result.error
    # --no-plan validates the YAML only, so the guard is not reached
    assert check_recipe(tmp_path / "r.yaml", plan=False).ok


@pytest.mark.parametrize(("change", "field"), [
    ({"model": {"config": {"model_type": "t5", "d_model": 32, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                           "d_ff": 64}}, "data": {"packing": True, "max_length": 128}}, "data.packing"),
    ({"model": {"config": {"model_type": "t5", "d_model": 32, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                           "d_ff": 64}, "chat_template": "default"}}, "model.chat_template"),
    ({"model": {"attn_implementation": "flash_attn2"}}, "model.attn_implementation"),
    ({"data": {"max_target_length": 32}}, "data.max_target_length"),
    ({"training": {"seed": -1}}, "training.seed"),
    ({"model": {"dtype": "bf16"}}, "model.dtype"),
    ({"model": {"config": {"model_type": "no_such_architecture"}}}, "model.config.model_type"),
    ({"model": {"config": None, "name_or_path": "./no/such/folder"}}, "model.name_or_path"),
])
def test_incompatible_model_settings_fail(tmp_path, change, field) -> None:
    recipe = _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix())
    for section, values in change.items():
        for key, value in values.items():
            recipe.setdefault(section, {})
            if value is None:
                recipe[section].pop(key, None)
            else:
                recipe[section][key] = value
    result = check_recipe(_write(tmp_path, "r.yaml", recipe), plan=False)
    assert not result.ok and f"field '{field}'" in result.error, result.error


def test_one_bad_recipe_among_good_ones_exits_nonzero(tmp_path, capsys) -> None:
    bad = _write(tmp_path, "bad.yaml", _tiny_recipe("missing.yaml"))
    rc = main(["recipe", "check", str(TINY_RECIPE), str(bad), "--no-plan"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[0].startswith("OK") and out[1].startswith("FAIL") and out[-1] == "1 of 2 recipes OK"


@pytest.mark.integration
def test_console_script_runs_on_shipped_recipes(tmp_path) -> None:
    """The command as CI runs it: `mixtune recipe check recipes/*.yaml`, exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIXTUNE_CACHE": str(tmp_path / "mc")}
    proc = subprocess.run([sys.executable, "-m", "mixtune", "recipe", "check", *map(str, RECIPES), "--no-plan"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\nOK") + proc.stdout.startswith("OK") == len(RECIPES)


@pytest.mark.parametrize(("overrides", "field"), [
    (["model.attn_implementation=flash_attn2"], "model.attn_implementation"),
    (["model.config.model_type=t5", "data.packing=true"], "data.packing"),
    (["data.max_target_length=32"], "data.max_target_length"),
    (["training.seed=-1"], "training.seed"),
    (["model.dtype=fp16"], "model.dtype"),
])
def test_train_enforces_the_same_rules(tmp_path, capsys, overrides, field) -> None:
    """`mixtune train` loads recipes through the same validators: one line naming the field, exit 2."""
    recipe = _write(tmp_path, "r.yaml", _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix()))
    assert main(["train", str(recipe), *overrides, f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixtune: error:") and f"field '{field}'" in err[0], err
    assert not (tmp_path / "run").exists()


def test_flash_attention_with_packing_is_padding_free(tmp_path) -> None:
    """FlashAttention packs padding-free (no 4D mask), so the recipe is valid."""
    recipe = _tiny_recipe((REPO / "data_mixtures" / "superni_sample.yaml").as_posix())
    recipe["model"]["attn_implementation"] = "flash_attention_2"
    recipe["data"].update({"packing": True, "max_length": 128})
    result = check_recipe(_write(tmp_path, "r.yaml", recipe), plan=False)
    assert result.ok and "packing padding_free (flash_attention_2)" in result.line(), result.line()
