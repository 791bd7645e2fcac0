"""Exact resume with real processes: killed and resumed runs end with the same parameters and data.

Single process: N steps straight vs the same run SIGKILLed after a checkpoint and resumed with
`resume: auto` (an incomplete checkpoint planted in between must be ignored) -> identical final
parameters. Two processes: the global data order (stream positions and their tasks, recorded with
--data-order-log) of a straight run equals that of a run stopped half-way and resumed with a
different number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RECIPE
from safetensors.torch import load_file

FAST = ["training.per_device_batch_size=2", "data.max_length=64", "data.max_source_length=48",
        "training.logging_steps=1"]

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(processes: int, *args: str) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "mixtune", "train", str(TINY_RECIPE), *FAST, *args]
    # torchrun: on a machine without GPUs `accelerate launch` starts several processes only with DeepSpeed
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(_free_port()), "-m", "mixtune", "train", str(TINY_RECIPE), *FAST, *args]


def _run(cmd: list[str], log: Path) -> None:
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=420)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_killed_and_resumed_run_ends_with_identical_parameters(tmp_path: Path) -> None:
    steps = ["training.max_steps=6", "training.save_steps=2"]
    straight = tmp_path / "straight"
    _run(_train_cmd(1, f"output_dir={straight}", *steps), tmp_path / "straight.log")

    killed = tmp_path / "killed"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(_train_cmd(1, f"output_dir={killed}", *steps), cwd=REPO, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    try:
        while not list(killed.glob("checkpoint-*/COMPLETE")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    done = sorted(int(p.parent.name.split("-")[1]) for p in killed.glob("checkpoint-*/COMPLETE"))
    assert done and done[-1] < 6

    # a save interrupted later than the last complete checkpoint: weights written, no marker
    partial = killed / f"checkpoint-{done[-1] + 1}"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"half-written")

    _run(_train_cmd(1, f"output_dir={killed}", *steps), tmp_path / "resumed.log")
    assert f"resuming from {killed / f'checkpoint-{done[-1]}'}" in (killed / "train.log").read_text()
    a, b = _weights(straight / "final"), _weights(killed / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    run_a = json.loads((straight / "final" / "mixtune_run.json").read_text())
    run_b = json.loads((killed / "final" / "mixtune_run.json").read_text())
    assert run_a["trained_task_counts"] == run_b["trained_task_counts"]
    assert run_b["resumed_from"].endswith(f"checkpoint-{done[-1]}")


def _order(log: Path) -> list[tuple[int, str]]:
    """(position, task) of every example the run trained on, over all processes, by position."""
    seen = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        seen += list(zip(rec["positions"], rec["tasks"], strict=True))
    return sorted(seen)


def test_two_process_data_order_survives_resume_with_another_process_count(tmp_path: Path) -> None:
    steps = ["training.max_steps=4", "training.save_steps=2"]
    straight = tmp_path / "straight"
    _run(_train_cmd(2, f"output_dir={straight}", *steps, "--data-order-log", str(tmp_path / "a.jsonl")),
         tmp_path / "a.log")
    expected = _order(tmp_path / "a.jsonl")
    assert [p for p, _ in expected] == list(range(16))  # 4 steps x 2 per device x 2 processes

    # the same run in two parts: 2 steps on two processes, then resumed on one process with the same
    # global batch (per-device batch doubled)
    split = tmp_path / "split"
    _run(_train_cmd(2, f"output_dir={split}", "training.max_steps=2", "training.save_steps=2",
                    "--data-order-log", str(tmp_path / "b1.jsonl")), tmp_path / "b1.log")
    _run(_train_cmd(1, f"output_dir={split}", *steps, "training.per_device_batch_size=4",
                    "--data-order-log", str(tmp_path / "b2.jsonl")), tmp_path / "b2.log")
    first, second = _order(tmp_path / "b1.jsonl"), _order(tmp_path / "b2.jsonl")
    assert [p for p, _ in first] == list(range(8)) and [p for p, _ in second] == list(range(8, 16))
    assert first + second == expected
    state = json.loads((split / "checkpoint-4" / "mixtune_state.json").read_text())
    assert state["position"] == 16 and state["world_size"] == 1
