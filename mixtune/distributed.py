"""Process-group helpers for every layer: the launch's world size, a barrier, a clean shutdown (no-ops in one
process)."""

from __future__ import annotations


def barrier() -> None:
    """Wait for every process of the default process group; nothing when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def group_size() -> int:
    """The size of the open default process group; 0 when there is none (torch is not imported for it)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 0


def shutdown() -> None:
    """Leave the default process group cleanly at the end of a successful multi-process job: wait for every
    process, then destroy the group. A process that exits while gloo still holds its peers' connections can
    abort ("terminate called without an active exception", SIGABRT) after its work is done, and the launcher
    then reports the whole job as failed. Nothing when torch was not imported or no group exists."""
    if group_size():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


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
