"""Split an evaluation over the launched processes: shard → evaluate batch by batch → gather, in one place.

Generation and rank classification both hand each process a strided share of length-sorted work, padded
with repeats to the same number of batches (ZeRO-3 needs every rank in every forward), run the model on it
in eval mode (restoring training mode after), and gather the (index, value) pairs once; repeats carry
identical values and collapse when the results are put back in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def process_state() -> Any:
    """accelerate's PartialState; without CUDA, processes started by a launcher join over gloo on CPU."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def length_sorted(lengths: Sequence[int]) -> list[int]:
    """Indices ordered by decreasing length (ties keep their order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def shard_for_process(order: Sequence[int], rank: int, world: int) -> list[int]:
    """This process's strided share of `order`, padded with its last entry to ceil(n / world) items."""
    share = list(order[rank::world])
    size = math.ceil(len(order) / world) if order else 0
    filler = share[-1] if share else (order[-1] if order else None)
    while len(share) < size and filler is not None:
        share.append(filler)
    return share


@dataclass(frozen=True)
class Shard:
    """This process's share of the work (indices into the caller's items) and its place in the launch."""

    indices: list[int]
    world: int = 1
    is_main: bool = True


def shard(order: Sequence[int], *, distributed: bool = True) -> Shard:
    """This process's share of `order` (all of it in one process, or without `distributed`)."""
    if not distributed:
        return Shard(list(order))
    state = process_state()
    world = state.num_processes
    share = shard_for_process(order, state.process_index, world) if world > 1 else list(order)
    return Shard(share, world, state.is_local_main_process)


def evaluate_sharded(model: Any, work: Shard, size: int, evaluate: Callable[[list[int]], Sequence[T]], *,
                     batch_size: int, fill: T) -> list[T]:
    """`evaluate(batch)` (one value per index) over `work`'s indices in batches of `batch_size`, with the
    model in eval mode; the values of every process gathered into a list of `size` (`fill` where none)."""
    was_training = getattr(model, "training", False)
    model.eval()
    local: list[tuple[int, T]] = []
    try:
        for start in range(0, len(work.indices), batch_size):
            batch = work.indices[start:start + batch_size]
            local.extend(zip(batch, evaluate(batch), strict=True))
    finally:
        if was_training:
            model.train()
    if work.world > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    results = [fill] * size
    for index, value in local:  # repeats from padded shares carry identical values
        results[index] = value
    return results
