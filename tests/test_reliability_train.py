"""Training faults on a real tiny run: secrets never written, safetensors only, a crash or a full disk
while a checkpoint is written leaves the previous checkpoint to resume from, and the resumed run ends
with the same weights as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE
from safetensors.torch import load_file

from mixtune.cli import main
from mixtune.train.checkpoint import MARKER, latest_complete, list_checkpoints

RECIPE = str(TINY_RECIPE)
SETTINGS = ["training.max_steps=6", "training.save_steps=2", "training.save_total_limit=null",
            "training.logging_steps=1", "training.per_device_batch_size=2", "data.max_length=64",
            "data.max_source_length=48"]
WANDB_KEY = "0123456789abcdef0123456789abcdef0badc0de"
HF_TOKEN = "hf_ReliabilityTestTokenAbCdEfGhIjKlMnOpQr"


def _weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, with a wandb key and a hub token in the environment and wandb offline."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", WANDB_KEY)
        mp.setenv("HF_TOKEN", HF_TOKEN)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(out))
        # secrets that slip into text: a token in a git remote URL, a key pasted into the mixture's name
        mp.setattr("mixtune.train.run.git_commit", lambda: f"abc123 (https://user:{HF_TOKEN}@example.com/repo)")
        assert main(["train", RECIPE, f"output_dir={out}", "logging.wandb=offline", *SETTINGS,
                     f"data.mixture.name=tiny-{WANDB_KEY}"]) == 0
    return out


@pytest.mark.integration
def test_secrets_never_reach_any_output(reference: Path) -> None:
    files = [p for p in reference.rglob("*") if p.is_file()]
    assert (reference / "final" / "mixtune_run.json") in files and len(files) > 20
    leaks = []
    for path in files:
        data = path.read_bytes()
        for secret in (WANDB_KEY, HF_TOKEN):
            if secret.encode() in data:
                leaks.append(str(path.relative_to(reference)))
    assert not leaks, f"secrets written to {leaks}"
    run = json.loads((reference / "final" / "mixtune_run.json").read_text())
    assert run["git_commit"] == "abc123 (https://user:***@example.com/repo)"
    assert run["mixture"]["name"] == "tiny-***"
    assert "tiny-***" in (reference / "train.log").read_text()


def test_weights_are_safetensors_only(reference: Path) -> None:
    folders = [reference / "final", *list_checkpoints(reference)]
    assert len(folders) == 4
    for folder in folders:
        assert (folder / "model.safetensors").is_file(), folder
        names = {p.name for p in folder.iterdir()}
        assert not {n for n in names if n.startswith("pytorch_model") or n.endswith((".ckpt", ".pkl"))}, names


def _crash_run(out: Path, patch: str) -> subprocess.CompletedProcess:
    """`mixtune train` in a child process with `patch` (Python source) applied first."""
    script = "\n".join([
        "import os, sys",
        patch,
        "from mixtune.cli import main",
        f"sys.exit(main(['train', {RECIPE!r}, 'output_dir={out}', *{SETTINGS!r}]))",
    ])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


KILL_AFTER_WEIGHTS = """
from transformers import Trainer
_orig = Trainer._save_optimizer_and_scheduler
def _save(self, output_dir):
    if self.state.global_step == 4:  # the model weights of checkpoint-4 are on disk, the optimizer is not
        os._exit(9)
    return _orig(self, output_dir)
Trainer._save_optimizer_and_scheduler = _save
"""
KILL_BEFORE_MARKER = """
import mixtune.train.checkpoint as ckpt
_orig = ckpt.atomic_write_text
def _write(path, text):
    if path.name == ckpt.MARKER and path.parent.name == "checkpoint-4":
        os._exit(9)  # everything of checkpoint-4 is written except its COMPLETE marker
    return _orig(path, text)
ckpt.atomic_write_text = _write
"""


@pytest.mark.integration
@pytest.mark.parametrize("patch", [KILL_AFTER_WEIGHTS, KILL_BEFORE_MARKER], ids=["after-weights", "before-marker"])
def test_killed_mid_checkpoint_resumes_from_the_previous_one(reference: Path, tmp_path: Path, patch: str) -> None:
    out = tmp_path / "run"
    done = _crash_run(out, patch)
    assert done.returncode == 9, done.stderr[-2000:]
    half = out / "checkpoint-4"
    assert half.is_dir() and not (half / MARKER).exists()
    assert (half / "model.safetensors").exists()  # it looks like a checkpoint, but is not complete
    assert latest_complete(out) == out / "checkpoint-2"
    assert not (out / "final").exists()
    assert main(["train", RECIPE, f"output_dir={out}", *SETTINGS]) == 0
    run = json.loads((out / "final" / "mixtune_run.json").read_text())
    assert run["resumed_from"].endswith("checkpoint-2")
    expected, got = _weights(reference / "final"), _weights(out / "final")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.integration
def test_disk_full_during_checkpoint_save(reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from transformers import Trainer

    out = tmp_path / "run"
    original = Trainer._save_optimizer_and_scheduler

    def full(self, output_dir):
        if self.state.global_step == 4:
            with open(Path(output_dir) / "optimizer.pt", "wb") as f:
                f.write(b"\0" * 100)  # a few bytes made it, then the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "optimizer.pt"))
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full)
    capsys.readouterr()
    assert main(["train", RECIPE, f"output_dir={out}", *SETTINGS]) == 1
    err = capsys.readouterr().err
    assert "mixtune: error: [Errno 28] No space left on device" in err and "optimizer.pt" in err
    assert not (out / "checkpoint-4" / MARKER).exists() and latest_complete(out) == out / "checkpoint-2"
    assert not (out / "final").exists()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)  # space freed: resume
    assert main(["train", RECIPE, f"output_dir={out}", *SETTINGS]) == 0
    expected, got = _weights(reference / "final"), _weights(out / "final")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
