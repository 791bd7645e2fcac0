"""One rank of a two-process DeepSpeed ZeRO-2 run is SIGKILLed mid-training: the job stops (no hang), the
last complete checkpoint is intact, and `resume: auto` ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RECIPE
from safetensors.torch import load_file

from mixtune.train.checkpoint import MARKER, latest_complete, list_checkpoints

RECIPE = str(TINY_RECIPE)
SETTINGS = ["training.max_steps=4", "training.save_steps=2", "training.save_total_limit=null",
            "training.logging_steps=1", "training.per_device_batch_size=2", "data.max_length=64",
            "data.max_source_length=48"]
KILL_STEP = 3  # rank 1 dies as optimizer step 3 begins: checkpoint-2 is the last complete one
DRIVER = """
import os, signal, sys, time
import transformers
_begin = transformers.TrainerCallback.on_step_begin
def on_step_begin(self, args, state, control, **kwargs):
    if os.environ.get("RANK") == "1" and state.global_step + 1 == int(os.environ["KILL_STEP"]):
        if os.environ.get("HANG"):
            time.sleep(10**6)  # alive but stuck: the others wait in a collective until the timeout
        os.kill(os.getpid(), signal.SIGKILL)
    return _begin(self, args, state, control, **kwargs)
if os.environ.get("KILL_STEP"):
    transformers.TrainerCallback.on_step_begin = on_step_begin
from mixtune.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, out: Path, kill_step: int | None = None, timeout: int = 240,
            extra: tuple[str, ...] = (), hang: bool = False) -> tuple[int, str, float]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("KILL_STEP", None)
    env.pop("HANG", None)
    if hang:
        env["HANG"] = "1"
    if kill_step is not None:
        env["KILL_STEP"] = str(kill_step)
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "2", "--use_deepspeed",
           "--zero_stage", "2", "--main_process_port", str(_port()), str(driver), RECIPE, f"output_dir={out}",
           *SETTINGS, *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


@pytest.mark.integration
def test_rank_killed_then_resumed(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    code, log, seconds = _launch(tmp_path, killed, KILL_STEP, timeout=150)  # a hang would hit the timeout
    print(f"killed run stopped after {seconds:.1f} s")
    assert code != 0, log[-3000:]
    assert "Signals.SIGKILL" in log or "exitcode  : -9" in log or "signal 9" in log.lower(), log[-3000:]
    assert latest_complete(killed) == killed / "checkpoint-2"
    assert all((c / MARKER).exists() for c in list_checkpoints(killed))  # no complete-looking half save
    assert not (killed / "final").exists()

    code, log, seconds = _launch(tmp_path, killed)
    print(f"resumed run: {seconds:.1f} s")
    assert code == 0, log[-3000:]
    assert "resuming from" in (killed / "train.log").read_text()

    straight = tmp_path / "straight"
    code, log, seconds = _launch(tmp_path, straight)
    print(f"uninterrupted run: {seconds:.1f} s")
    assert code == 0, log[-3000:]
    expected = load_file(str(straight / "final" / "model.safetensors"))
    got = load_file(str(killed / "final" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.integration
def test_hung_rank_ends_the_job_after_the_timeout(tmp_path: Path) -> None:
    """Rank 1 stops responding (sleeps) at step 3: with distributed.timeout_s=15 the job ends, not in 30 min."""
    out = tmp_path / "hung"
    code, log, seconds = _launch(tmp_path, out, KILL_STEP, timeout=150, extra=("distributed.timeout_s=15",),
                                 hang=True)
    print(f"hung run stopped after {seconds:.1f} s")
    assert code != 0, log[-3000:]
    assert "Timed out waiting 15000ms" in log, log[-3000:]
    assert latest_complete(out) == out / "checkpoint-2" and not (out / "final").exists()


@pytest.mark.integration
def test_nan_loss_under_deepspeed_stops_before_the_update(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A learning rate of 1e30 makes step 2's loss non-finite. Under DeepSpeed the engine updates inside
    backward, so the loss is checked before it on every rank: the run stops at step 2 naming its tasks, and
    no checkpoint with the diverged weights is written (checkpoint-1 is the last, and finite).
    Resuming that two-process DeepSpeed checkpoint in one process without DeepSpeed is refused."""
    out = tmp_path / "diverged"
    code, log, seconds = _launch(tmp_path, out, timeout=150, extra=(
        "training.learning_rate=1e30", "training.warmup_ratio=0", "training.save_steps=1",
        "training.logging_steps=1000"))
    print(f"diverged run stopped after {seconds:.1f} s")
    assert code != 0, log[-3000:]
    assert "NaN/inf at step 2" in log and "the batch's tasks" in log, log[-3000:]
    assert latest_complete(out) == out / "checkpoint-1" and not (out / "checkpoint-2").exists()
    weights = load_file(str(out / "checkpoint-1" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())

    from mixtune.cli import main

    capsys.readouterr()
    assert main(["train", RECIPE, f"output_dir={out}", *SETTINGS, "training.learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "DeepSpeed ZeRO state saved by 2 process(es)" in err and "1 process(es) without DeepSpeed" in err, err
    assert "model.name_or_path=" in err
