"""Untrusted files run nothing: YAML tags, task names that are paths, remote code, pickled weights."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import TINY_LLAMA

from mixtune.cli import main
from mixtune.config import apply_overrides, load_yaml
from mixtune.errors import ConfigError, DataError, MixtuneError

#: One layer and a 64-token context: enough for the safety checks, quick to save and load.
SHORT_LLAMA = {**TINY_LLAMA, "num_hidden_layers": 1, "max_position_embeddings": 64}


def _evil(marker: Path) -> list[str]:
    """YAML documents that would create `marker` if a loader constructed Python objects from tags."""
    cmd = f"touch {marker}"
    return [
        f"name: !!python/object/apply:os.system [{cmd!r}]\n",
        f"name: !!python/object/new:subprocess.check_call [[sh, -c, {cmd!r}]]\n",
        "name: !!python/name:os.system\n",
        "name: !!python/object:collections.OrderedDict {}\n",
        f"!!python/object/apply:os.system [{cmd!r}]\n",
    ]


@pytest.mark.parametrize("loader", ["load_yaml", "mixture", "recipe", "eval"])
def test_yaml_tags_construct_nothing(tmp_path: Path, loader: str) -> None:
    from mixtune.eval.spec import load_eval_spec
    from mixtune.mixtures.spec import load_mixture
    from mixtune.recipe import load_recipe

    load = {"load_yaml": load_yaml, "mixture": load_mixture, "recipe": load_recipe, "eval": load_eval_spec}[loader]
    marker = tmp_path / "pwned"
    for i, text in enumerate(_evil(marker)):
        path = tmp_path / f"evil{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load(path)
        assert str(path) in str(err.value) and "YAML" in str(err.value)
        assert not marker.exists()


def test_override_values_are_plain_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    out = apply_overrides({"a": 1}, [f"a=!!python/object/apply:os.system ['touch {marker}']"])
    assert isinstance(out["a"], str) and not marker.exists()


def test_cli_refuses_tagged_mixture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "mix.yaml"
    path.write_text(_evil(marker)[0])
    assert main(["mixture", "show", str(path)]) == 2
    assert "invalid YAML" in capsys.readouterr().err and not marker.exists()


# ---- task names and split files cannot escape the collection folder ----

@pytest.fixture
def sample_copy(tmp_path: Path, bundled_dir: Path) -> Path:
    coll = tmp_path / "superni"
    shutil.copytree(bundled_dir / "splits", coll / "splits")
    (coll / "tasks").mkdir()
    for name in ("task288_gigaword_summarization", "task1557_jfleg_answer_generation"):
        shutil.copy(bundled_dir / "tasks" / f"{name}.json", coll / "tasks")
    # a task file outside tasks/ that a path-like name could reach
    (tmp_path / "outside.json").write_text(json.dumps({"Definition": ["x"], "Instances": [{"input": "secret",
                                                                                          "output": ["y"]}]}))
    return coll


@pytest.mark.parametrize("line", ["../outside", "../../etc/passwd", "/etc/passwd", "tasks/../../outside", "..",
                                  "~root/x", "task\\..\\x"])
def test_split_file_lines_that_are_paths_are_refused(sample_copy: Path, line: str) -> None:
    from mixtune.tasks.collection import open_collection

    (sample_copy / "splits/default/test_tasks.txt").write_text(f"task288_gigaword_summarization\n{line}\n")
    collection = open_collection("superni", sample_copy)
    with pytest.raises(DataError) as err:
        collection.split("default")
    assert "test_tasks.txt" in str(err.value) and "line 2" in str(err.value)


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "..", "../superni/tasks/task288_gigaword_summarization"])
def test_task_names_that_are_paths_are_refused(sample_copy: Path, name: str) -> None:
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture
    from mixtune.tasks.collection import open_collection
    from mixtune.tasks.matching import resolve_tasks

    collection = open_collection("superni", sample_copy)
    for call in (lambda: collection.info(name), lambda: collection.instances(name),
                 lambda: resolve_tasks(collection, tasks=[name])):
        with pytest.raises(DataError):
            call()
    spec = load_mixture({"name": "m", "total_examples": 4, "sources": [
        {"name": "s", "path": str(sample_copy), "tasks": {"include": [name]}}]})
    with pytest.raises(MixtuneError):
        plan_mixture(spec)


@pytest.mark.parametrize("split", ["../default", "/etc", "..", "default/../../x"])
def test_split_names_that_are_paths_are_refused(sample_copy: Path, split: str) -> None:
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture
    from mixtune.tasks.collection import open_collection

    with pytest.raises(DataError):
        open_collection("superni", sample_copy).split(split)
    spec = load_mixture({"name": "m", "total_examples": 4, "sources": [
        {"name": "s", "path": str(sample_copy), "split": split}]})
    with pytest.raises(MixtuneError):
        plan_mixture(spec)


# ---- remote code and pickles ----

def _remote_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config asks for custom code that would create `marker` when imported."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    return folder


def test_trust_remote_code_is_off_by_default(tmp_path: Path) -> None:
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    marker = tmp_path / "pwned"
    folder = _remote_code_model(tmp_path / "model", marker)
    cfg = ModelConfig(name_or_path=str(folder), tokenizer="minilm")
    assert cfg.trust_remote_code is False
    with pytest.raises(ConfigError) as err:
        load_model_and_tokenizer(cfg)
    assert "model.name_or_path" in str(err.value)
    assert not marker.exists()


def test_trust_remote_code_warns_when_turned_on() -> None:
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    cfg = ModelConfig(config=SHORT_LLAMA, trust_remote_code=True)
    with pytest.warns(UserWarning, match="trust_remote_code"):
        load_model_and_tokenizer(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            load_model_and_tokenizer(ModelConfig(config=SHORT_LLAMA))
        except UserWarning as w:  # another library's warning is fine, mixtune's must not appear
            assert "trust_remote_code" not in str(w)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling runs this
        return (Path.touch, (Path(self.marker),))


def test_pickled_weights_are_never_loaded(tmp_path: Path) -> None:
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=SHORT_LLAMA))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Evil(str(marker))}, f)
    with pytest.raises(ConfigError) as err:
        load_model_and_tokenizer(ModelConfig(name_or_path=str(folder)))
    assert "safetensors" in str(err.value)
    assert not marker.exists()
