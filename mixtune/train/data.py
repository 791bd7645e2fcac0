"""The training stream: global positions of the mixture, sharded over processes, resumable in O(1).

Training consumes the mixture plan in position order. Position p of the stream is example
`p mod len(plan)` of the plan (epoch `p // len(plan)`), so the stream continues across epoch
boundaries. The dataset yields *positions* (ints) from a start position; accelerate's
`IterableDatasetShard` deals each global batch of `per_device_batch × world_size` consecutive
positions out to the processes in rank order, and the collator turns a process's positions into
examples (prompt, completion) and tensors. Consequences:

- the global order does not depend on the number of processes: optimizer step t consumes positions
  [t·G, (t+1)·G) with G = per_device_batch × grad_accum × world_size;
- resuming at position P costs nothing: the stream simply starts at P (no replay, no skipping);
- only the examples a process trains on are encoded on that process;
- DataLoader workers (`data.num_workers`) split the stream by micro-batch: worker w of W yields the
  positions of global micro-batches w, w+W, ... and the DataLoader returns the workers' batches in
  that round-robin order, so the batches are the same with any number of workers (and resumable).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset


class PositionStream(IterableDataset):
    """Positions `start, start+1, ..., stop-1` of the training stream (an IterableDataset of ints).

    `micro_batch` is the number of positions of one global micro-batch (per-device batch x processes):
    inside DataLoader worker w of W, only the micro-batches w, w+W, ... are yielded (see the module doc).
    """

    def __init__(self, start: int, stop: int, *, micro_batch: int = 1) -> None:
        if not 0 <= start <= stop:
            raise ValueError(f"invalid stream range [{start}, {stop})")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        self.start = start
        self.stop = stop
        self.micro_batch = micro_batch

    def __iter__(self) -> Iterator[int]:
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        if worker is None or worker.num_workers == 1:
            return iter(range(self.start, self.stop))
        return self._worker_share(worker.id, worker.num_workers)

    def _worker_share(self, index: int, workers: int) -> Iterator[int]:
        size = self.micro_batch
        for lo in range(self.start + index * size, self.stop, workers * size):
            yield from range(lo, min(lo + size, self.stop))

    def set_epoch(self, epoch: int) -> None:
        """The order is fixed by positions; epochs of the Trainer's loop change nothing."""


def stream_examples(plan: Any, positions: Sequence[int], *, tokenizer: Any = None,
                    max_source_length: int | None = None) -> list[dict[str, Any]]:
    """The examples at stream `positions` (wrapping around the plan each epoch), in the given order."""
    size = len(plan)
    if size == 0:
        raise ValueError("the mixture plan is empty")
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(positions):
        # a run of consecutive positions inside one epoch is read with one iter_examples call
        j = i + 1
        while (j < len(positions) and positions[j] == positions[j - 1] + 1
               and positions[j] // size == positions[i] // size):
            j += 1
        offset = positions[i] % size
        run = list(plan.iter_examples(offset, offset + (j - i), tokenizer=tokenizer,
                                      max_source_length=max_source_length))
        for pos, example in zip(positions[i:j], run, strict=True):
            example = dict(example)
            example["stream_position"] = pos
            out.append(example)
        i = j
    return out


class StreamCollator:
    """Positions -> examples (from the plan) -> a tensor batch (by the model-specific collator).

    With `order_log` set, each batch's positions and tasks are appended to that JSONL file (one
    line per micro-batch; used by tests and for auditing the data a run trained on). With
    `max_positions` set (the model's `max_position_embeddings`), a longer batch is a DataError naming
    the example, before the model would try to attend over it. With `task_ids` set, the batch also
    holds the per-token task indices of `mixtune.train.task_losses` (for the per-task training loss).
    """

    def __init__(self, plan: Any, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], *,
                 tokenizer: Any = None, max_source_length: int | None = None,
                 order_log: str | Path | None = None, rank: int = 0, max_positions: int | None = None,
                 length_field: str = "data.max_length", task_ids: bool = False) -> None:
        self.plan = plan
        self.task_ids = task_ids
        self._task_index = {(t.source, t.name): i for i, t in enumerate(plan.tasks)}
        self.max_positions = max_positions
        self.length_field = length_field
        self.collate = collate
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.order_log = Path(order_log) if order_log else None
        self.rank = rank

    def __call__(self, positions: list[int]) -> dict[str, Any]:
        positions = [int(p) for p in positions]
        examples = stream_examples(self.plan, positions, tokenizer=self.tokenizer,
                                   max_source_length=self.max_source_length)
        if self.order_log is not None:
            self.order_log.parent.mkdir(parents=True, exist_ok=True)
            record = {"rank": self.rank, "positions": positions, "tasks": [e["task"] for e in examples]}
            with self.order_log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        batch = self.collate(examples)
        ids = batch.get("input_ids")
        positions_ids = batch.get("position_ids")  # padding-free rows: positions restart at each example
        length = (int(positions_ids.max()) + 1 if isinstance(positions_ids, torch.Tensor) and positions_ids.numel()
                  else ids.shape[-1] if isinstance(ids, torch.Tensor) else 0)
        if self.max_positions and length > self.max_positions:
            from mixtune.errors import DataError

            mask = batch.get("attention_mask")
            lengths = (mask.sum(-1) if isinstance(mask, torch.Tensor) and mask.dim() == 2
                       else torch.full((ids.shape[0],), ids.shape[-1])).tolist()
            longest = max(range(len(lengths)), key=lambda i: lengths[i])
            i = min(longest, len(examples) - 1)
            raise DataError(
                f"the example at stream position {positions[i]} (task {examples[i]['task']}) is {length} "
                f"tokens long; the model takes at most {self.max_positions} (max_position_embeddings)",
                field=self.length_field, hint=f"set {self.length_field} to at most {self.max_positions} "
                "to truncate long examples")
        if self.task_ids and isinstance(batch.get("labels"), torch.Tensor):
            from mixtune.train.task_losses import TASK_IDS_KEY, token_task_ids

            tasks = [self._task_index[(e["source"], e["task"])] for e in examples]
            layout = getattr(self.collate, "last_layout", None)  # packing: the rows' examples
            batch[TASK_IDS_KEY] = token_task_ids(batch["labels"], tasks, layout)
        # tensors, and the ints of padding-free batches (max_length_q/k)
        return {k: v for k, v in batch.items() if isinstance(v, (torch.Tensor, int))}


def global_batch_size(per_device_batch_size: int, gradient_accumulation_steps: int, world_size: int) -> int:
    """Stream positions consumed by one optimizer step."""
    return per_device_batch_size * gradient_accumulation_steps * world_size


def stream_position(global_step: int, *, start_step: int, start_position: int, global_batch_size: int) -> int:
    """Stream position after `global_step` optimizer steps of a run that began at (start_step, start_position)."""
    return start_position + (global_step - start_step) * global_batch_size
