"""Training loss per task, category and source, from the logits the training forward already made.

The stream knows the task of every example, so the collator adds one more tensor to each batch:
`TASK_IDS_KEY`, shaped like `labels`, holding for every trained label token the plan index of the
task its example came from (-1 elsewhere; with packing the tokens of each example in a row get that
example's task). The trainer pops it before the forward (the model never sees it) and hands it with
the forward's logits and labels to `TaskLossCallback.add`: per-token cross-entropy of the trained
tokens only (no second forward pass), summed per task on the device. At every logging step the sums
and token counts are all-reduced over processes (they already span the gradient-accumulation
micro-batches) and the main process appends one line to `losses.jsonl`:

    {"step", "loss", "tokens", "per_task": {name: {"loss", "tokens"}}, "per_category": {...}, "per_source": {...}}

`loss` is the token-weighted mean of the window's label tokens and `tokens` their count, so every
table's token-weighted mean is `loss` and its tokens add up to `tokens`. With `logging_steps: 1` it is
the Trainer's logged loss (both average the step's label tokens); over longer windows the Trainer
averages per-step means instead. With wandb on, the tables go to wandb as `loss_by_task/…`,
`loss_by_category/…` and `loss_by_source/…` charts. A non-finite loss is written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from mixtune.train.collators import IGNORE_INDEX

#: The batch key of the per-token task indices (popped by the trainer before the forward).
TASK_IDS_KEY = "mixtune_task_ids"
LOSSES_FILE = "losses.jsonl"


def token_task_ids(labels: torch.Tensor, example_tasks: Sequence[int],
                   layout: Sequence[Sequence[tuple[int, int]]] | None = None) -> torch.Tensor:
    """Per-token task index shaped like `labels` (-1 where the label is not trained on).

    Without `layout`, row i holds example i. With a packing `layout` (per row, the (example index,
    length) of its examples in order), each example's tokens get its task.
    """
    ids = torch.full(labels.shape, -1, dtype=torch.long)
    if layout is None:
        for i, task in enumerate(example_tasks[: labels.shape[0]]):
            ids[i] = task
    else:
        for r, row in enumerate(layout):
            start = 0
            for i, n in row:
                ids[r, start:start + n] = example_tasks[i]
                start += n
    return ids.masked_fill(labels == IGNORE_INDEX, -1)


def trained_token_losses(logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, *,
                         shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token cross-entropy, task index) of the trained label tokens; `shift` for causal models
    (logits at t predict the label at t+1), as the model's own loss does."""
    if shift:
        logits, labels, task_ids = logits[..., :-1, :], labels[..., 1:], task_ids[..., 1:]
    keep = labels != IGNORE_INDEX
    picked = logits.detach()[keep].float()
    losses = torch.nn.functional.cross_entropy(picked, labels[keep], reduction="none")
    return losses, task_ids[keep].to(losses.device)


class TaskLossCallback(TrainerCallback):
    """Sum the per-token losses per task between logging steps; write `losses.jsonl` (see the module doc)."""

    def __init__(self, plan: Any, output_dir: str | Path, *, start_step: int = 0, per_step: bool = False) -> None:
        self.names = [t.name for t in plan.tasks]
        self.categories = [t.category for t in plan.tasks]
        self.sources = [t.source for t in plan.tasks]
        self.path = Path(output_dir) / LOSSES_FILE
        self.start_step = start_step
        self._sums: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self.per_step = per_step  # also sum each optimizer step apart (`take_step`, for online mixing)
        self._step: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, *, shift: bool) -> None:
        """Count one micro-batch's trained tokens (called from the trainer's compute_loss)."""
        losses, tasks = trained_token_losses(logits, labels, task_ids, shift=shift)
        if self._sums is None:
            self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=losses.device)
            self._tokens = torch.zeros(len(self.names), dtype=torch.float64, device=losses.device)
        valid = tasks >= 0
        self._sums.index_add_(0, tasks[valid], losses[valid].double())
        self._tokens.index_add_(0, tasks[valid], torch.ones_like(losses[valid], dtype=torch.float64))
        if self.per_step:
            if self._step is None:
                self._step = torch.zeros(2, len(self.names), dtype=torch.float64, device=losses.device)
            self._step[0].index_add_(0, tasks[valid], losses[valid].double())
            self._step[1].index_add_(0, tasks[valid], torch.ones_like(losses[valid], dtype=torch.float64))

    def take_step(self, args: Any) -> tuple[Any, Any]:
        """The per-task loss sums and label tokens of the optimizer step just ended, summed over processes
        (numpy float64; every process gets the same values). Call on every process."""
        step, self._step = self._step, None
        sums, tokens = self._reduced(args, None if step is None else step[0], None if step is None else step[1])
        if sums is None or tokens is None:
            return np.zeros(len(self.names)), np.zeros(len(self.names))
        return sums.numpy(), tokens.numpy()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            _keep_lines_up_to(self.path, self.start_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or "learning_rate" not in logs:  # the Trainer's training log only
            return
        sums, tokens = self._reduced(args, self._sums, self._tokens)
        self._sums = self._tokens = None
        if not state.is_world_process_zero or sums is None:
            return
        line = self.line(state.global_step, sums.tolist(), tokens.tolist())
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if "wandb" in (args.report_to or []):
            _log_wandb(line)

    def _reduced(self, args: Any, sums: torch.Tensor | None, tokens: torch.Tensor | None,
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and args.world_size > 1
        if sums is None or tokens is None:
            if not distributed:
                return None, None
            sums = torch.zeros(len(self.names), dtype=torch.float64, device=args.device)
            tokens = torch.zeros_like(sums)
        if distributed:
            both = torch.stack([sums, tokens])
            dist.all_reduce(both)
            sums, tokens = both[0], both[1]
        return sums.cpu(), tokens.cpu()

    def line(self, step: int, sums: Sequence[float], tokens: Sequence[float]) -> dict[str, Any]:
        """One `losses.jsonl` record from per-task loss sums and token counts."""
        total_tokens = sum(tokens)
        return {"step": step, "loss": _finite(sum(sums) / total_tokens) if total_tokens else None,
                "tokens": int(total_tokens),
                "per_task": _table(self.names, sums, tokens),
                "per_category": _table(self.categories, sums, tokens),
                "per_source": _table(self.sources, sums, tokens)}


def _table(groups: Sequence[str], sums: Sequence[float], tokens: Sequence[float]) -> dict[str, dict[str, Any]]:
    acc: dict[str, list[float]] = {}
    for g, s, n in zip(groups, sums, tokens, strict=True):
        if n > 0:
            a = acc.setdefault(g, [0.0, 0.0])
            a[0] += s
            a[1] += n
    return {g: {"loss": _finite(s / n), "tokens": int(n)} for g, (s, n) in sorted(acc.items())}


def _finite(value: float) -> float | None:
    """NaN/inf (a diverged step, or one `training.on_nan: skip` dropped) is written as null: valid JSON."""
    return value if math.isfinite(value) else None


def _keep_lines_up_to(path: Path, step: int) -> None:
    """A resumed run drops the lines an earlier attempt wrote after its checkpoint (atomic rewrite)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [x for x in lines if x.strip() and json.loads(x)["step"] <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    os.replace(tmp, path)


def _log_wandb(line: dict[str, Any]) -> None:
    import wandb

    if wandb.run is None:
        return
    data: dict[str, Any] = {"train/global_step": line["step"]}
    for table, prefix in (("per_task", "loss_by_task"), ("per_category", "loss_by_category"),
                          ("per_source", "loss_by_source")):
        data.update({f"{prefix}/{name}": v["loss"] for name, v in line[table].items() if v["loss"] is not None})
    wandb.log(data)


def read_losses(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's `losses.jsonl` (empty when it has none)."""
    path = Path(output_dir) / LOSSES_FILE
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
