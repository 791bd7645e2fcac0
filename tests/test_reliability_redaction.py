"""Secrets a user puts into a run's name reach no file of the run (issue 12, item 7): not the Trainer's
pickled `training_args.bin`, not wandb's offline run files, not the console."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE

KEY = "0123456789abcdef0123456789abcdef0badf00d"


@pytest.mark.integration
def test_a_secret_in_the_run_name_reaches_no_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_API_KEY": KEY, "WANDB_MODE": "offline",
           "WANDB_DIR": str(out), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "mixtune", "-v", "train", str(TINY_RECIPE),
                           f"output_dir={out}", "logging.wandb=offline", f"logging.run_name=try-{KEY}",
                           "training.max_steps=2", "training.save_steps=2", "training.per_device_batch_size=2",
                           "training.logging_steps=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert KEY not in done.stdout + done.stderr
    time.sleep(2)  # wandb's service process may still be flushing
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "checkpoint-2" / "training_args.bin") in files and any("wandb" in str(p) for p in files)
    leaks = [str(p.relative_to(out)) for p in files if KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert b"try-***" in (out / "checkpoint-2" / "training_args.bin").read_bytes()
