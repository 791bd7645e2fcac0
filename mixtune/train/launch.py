"""`mixtune train RECIPE --print-launch`: the launch command for the recipe's nodes and processes.

The same recipe runs under every launcher; `distributed.launcher` picks which command is printed.
DeepSpeed is configured by the recipe (`distributed.deepspeed`), not by launcher flags.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

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
