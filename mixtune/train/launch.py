"""`mixtune train RECIPE --print-launch`: the launch command for the recipe's nodes and processes.

The same recipe runs under every launcher; `distributed.launcher` picks which command is printed.
DeepSpeed is configured by the recipe (`distributed.deepspeed`), not by launcher flags.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence

from mixtune.errors import ConfigError
from mixtune.recipe import Recipe

#: placeholders a multi-node command leaves for the cluster to fill (e.g. from SLURM variables)
MASTER_ADDR = "$MASTER_ADDR"
MASTER_PORT = "29500"
NODE_RANK = "$NODE_RANK"


def _join(parts: Sequence[str]) -> str:
    # keep $VARIABLES unquoted so the shell expands them
    return " ".join(p if p.startswith("$") else shlex.quote(p) for p in parts)


def launch_command(recipe: Recipe, recipe_path: str, overrides: Sequence[str] = ()) -> str:
    """The shell command that runs `recipe` with its `distributed` layout."""
    d = recipe.distributed
    train = ["train", recipe_path, *overrides]
    if d.nodes == 1 and d.processes_per_node == 1:
        return _join(["mixtune", *train])
    if d.launcher == "accelerate":
        cmd = ["accelerate", "launch", "--num_processes", str(d.nodes * d.processes_per_node)]
        if d.nodes > 1:
            cmd += ["--num_machines", str(d.nodes), "--machine_rank", NODE_RANK,
                    "--main_process_ip", MASTER_ADDR, "--main_process_port", MASTER_PORT]
        return _join([*cmd, "-m", "mixtune", *train])
    if d.launcher == "deepspeed":
        cmd = ["deepspeed"]
        if d.nodes > 1:
            cmd += ["--hostfile", "hostfile", "--num_nodes", str(d.nodes)]
        cmd += ["--num_gpus", str(d.processes_per_node), "--no_local_rank", "--module", "mixtune"]
        return _join([*cmd, *train])
    cmd = ["torchrun", "--nproc_per_node", str(d.processes_per_node)]
    if d.nodes > 1:
        cmd += ["--nnodes", str(d.nodes), "--node_rank", NODE_RANK,
                "--master_addr", MASTER_ADDR, "--master_port", MASTER_PORT]
    return _join([*cmd, "-m", "mixtune", *train])


def check_cpu_deepspeed_launch(recipe: Recipe, *, has_accelerator: bool,
                               env: Mapping[str, str] | None = None) -> None:
    """Refuse a DeepSpeed run on a CPU-only machine whose process no launcher placed in a process group.

    On CPU, `accelerate launch --num_processes N` without `--use_deepspeed` starts a single plain
    process (its simple launcher); DeepSpeed then looks for MPI to find its peers and dies on a missing
    `mpi4py`. Say how to launch instead.
    """
    env = os.environ if env is None else env
    deepspeed = recipe.distributed.deepspeed or env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if not deepspeed or has_accelerator or ("RANK" in env and "WORLD_SIZE" in env):
        return
    how = ("`accelerate launch` without --use_deepspeed starts one plain process there" if "ACCELERATE_USE_CPU" in env
           else "this process was started without one")
    raise ConfigError(
        f"DeepSpeed on a CPU-only machine needs processes started by `accelerate launch --use_deepspeed` or "
        f"`torchrun`; {how}", path=recipe.source, field="distributed.deepspeed",
        hint=f"e.g. accelerate launch --num_processes 2 --use_deepspeed -m mixtune train {recipe.source}, or "
             "distributed.deepspeed=null to train in one process")
