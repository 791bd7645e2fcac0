"""One-line `mixtune: error:` instead of a raw traceback (issue 12, item 5): deep YAML and JSON, a YAML
alias bomb, a huge value in an error, a full disk while model.safetensors is written (a real tmpfs),
and an input longer than the model's max_position_embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE

from mixtune.cli import main
from mixtune.limits import MAX_DEPTH

CAUSAL = str(TINY_RECIPE)


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with a one-line `mixtune: error:` last on stderr and no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    err = stderr.splitlines()[-1]
    assert err.startswith("mixtune: error: ") and "Traceback" not in stderr, stderr[:2000]
    assert len(err) < 1000, f"{len(err)} characters"
    return err


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\nmodel: {{name_or_path: *l{levels}}}\n"


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """9 levels: 9^9 copies of 'lol' (before: 312 MB of stderr, at 10 levels a MemoryError after 72 s)."""
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_alias_bomb(9))
    start = time.perf_counter()
    err = _error(capsys, ["train", str(recipe)])
    assert time.perf_counter() - start < 10
    assert "bomb.yaml: line " in err and "aliases expand to more than" in err


def test_modest_yaml_aliases_still_work(tmp_path: Path) -> None:
    from mixtune.config import load_yaml

    path = tmp_path / "ok.yaml"
    path.write_text("enc: &enc {definition: true, pos_examples: 2}\na: {encoding: *enc}\nb: {encoding: *enc}\n"
                    "c: {<<: *enc, neg_examples: 1}\n")
    assert load_yaml(path)["c"] == {"definition": True, "pos_examples": 2, "neg_examples": 1}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 100_000])
def test_deeply_nested_yaml_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                depth: int) -> None:
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("output_dir: " + "[" * depth + "]" * depth + "\n")
    err = _error(capsys, ["train", str(recipe)])
    assert f"nested deeper than {MAX_DEPTH} levels" in err


def test_recursive_yaml_alias_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "loop.yaml"
    recipe.write_text("output_dir: &a [x, *a]\n")
    assert "refers to a node that contains it" in _error(capsys, ["train", str(recipe)])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_task_line_and_predictions_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task": "t", "input": "a", "output": "b"}) + "\n"
                     + '{"task": "t", "input": "a", "output": ' + deep + "}\n")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("name: m\ntotal_examples: 4\nsources:\n  - {name: mine, type: jsonl, path: tasks.jsonl}\n")
    err = _error(capsys, ["mixture", "show", str(mixture)])
    assert "tasks.jsonl" in err and f"nested deeper than {MAX_DEPTH} levels" in err

    predictions = tmp_path / "pred.jsonl"
    predictions.write_text('{"id": "x", "prediction": ' + deep + "}\n")
    err = _error(capsys, ["eval", "score", str(predictions)])
    assert "pred.jsonl" in err and f"nested deeper than {MAX_DEPTH} levels" in err


def test_an_error_never_echoes_a_huge_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "huge.yaml"
    recipe.write_text(Path(CAUSAL).read_text().replace("learning_rate: 1.0e-3", "learning_rate: " + "9x" * 500_000))
    err = _error(capsys, ["train", str(recipe)])
    assert "training.learning_rate" in err and "more characters)" in err


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 6 MB tmpfs (root only): too small for the tiny model's 8 MB model.safetensors."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.integration
def test_disk_full_while_model_safetensors_is_written(small_disk: Path) -> None:
    """Before the fix: a raw `SafetensorError: Error while serializing: IoError(... StorageFull ...)`."""
    out = small_disk / "run"
    done = subprocess.run([sys.executable, "-m", "mixtune", "train", CAUSAL, f"output_dir={out}",
                           "training.max_steps=2", "training.save_steps=2", "training.per_device_batch_size=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and "SafetensorError" not in done.stderr
    assert last.startswith("mixtune: error: [Errno 28] No space left on device")
    assert f"{out}/checkpoint-2/model.safetensors" in last
    assert not (out / "checkpoint-2" / "COMPLETE").exists() and not (out / "final").exists()


@pytest.mark.integration
def test_input_longer_than_max_position_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No length limits and a 3,000-word input vs the tiny Llama's 256 positions (before: the model ran on
    it, or at 2M tokens tried to allocate 4 TB for attention)."""
    tasks = tmp_path / "long.jsonl"
    tasks.write_text(json.dumps({"task": "long", "input": "word " * 3000, "output": "x"}) + "\n")
    mixture = f"{{name: long, total_examples: 8, sources: [{{name: mine, type: jsonl, path: {tasks}}}]}}"
    common = ["train", CAUSAL, f"output_dir={tmp_path / 'run'}", f"data.mixture={mixture}", "training.max_steps=1",
              "training.per_device_batch_size=2"]
    err = _error(capsys, [*common, "data.max_length=null", "data.max_source_length=null"])
    assert "field 'data.max_length'" in err and "task long" in err and "at most 256" in err
    err = _error(capsys, [*common, "data.max_length=1024"])
    assert "1024 is longer than the model's max_position_embeddings (256)" in err
