"""Process-group helpers for every layer: the launch's world size, a barrier (no-ops in one process)."""

from __future__ import annotations


def barrier() -> None:
    """Wait for every process of the default process group; nothing when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def launch_world_size() -> int:
    """The number of processes this launch runs, known before any process group exists.

    The open process group's size when there is one; else what the launcher put in the environment, read as
    accelerate's `PartialState` reads it (`WORLD_SIZE`, then MPI's `PMI_SIZE` / `OMPI_COMM_WORLD_SIZE` /
    `MV2_COMM_WORLD_SIZE`; 1 without a launcher). `accelerate launch`, `torchrun` and `deepspeed` all set
    `WORLD_SIZE` for every process they start.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    from accelerate.utils import get_cpu_distributed_information

    return get_cpu_distributed_information().world_size
