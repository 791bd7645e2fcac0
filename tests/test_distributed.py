"""`mixtune.distributed`: the world size a launcher gives, known before any process group exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, os, sys
from mixtune.distributed import launch_world_size
before = launch_world_size()
from transformers import TrainingArguments
args = TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to=[])
record = {"rank": args.process_index, "before": before, "args": args.world_size, "after": launch_world_size()}
with open(os.path.join(sys.argv[1], f"rank{args.process_index}.json"), "w") as f:  # one file per rank: the
    json.dump(record, f)  # ranks' stdout lines can interleave in torchrun's shared pipe
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _probe_env(env: dict[str, str]) -> int:
    code = "from mixtune.distributed import launch_world_size; print(launch_world_size())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return int(out.stdout.strip())


def test_world_size_from_the_launch_environment() -> None:
    assert _probe_env(_env()) == 1
    assert _probe_env(_env(WORLD_SIZE="3")) == 3
    assert _probe_env(_env(OMPI_COMM_WORLD_SIZE="4")) == 4  # an MPI launch, as accelerate reads it


@pytest.mark.integration
def test_torchrun_world_size_matches_the_training_arguments(tmp_path: Path) -> None:
    """Under a real launcher the answer before any process group equals the Trainer's world size."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                          "localhost:0", str(script), str(tmp_path)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in seen] == [0, 1]
    assert all(r["before"] == r["args"] == r["after"] == 2 for r in seen), seen
