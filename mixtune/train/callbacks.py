"""Trainer callbacks: completing checkpoints (stream state + marker), metric lines of train.log, NaN policy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mixtune.distributed import barrier
from mixtune.errors import MixtuneError
from mixtune.train.checkpoint import StreamState, delete_checkpoint, mark_complete, rotate
from mixtune.train.data import stream_position


class CheckpointStateCallback(TrainerCallback):
    """After every save: record the stream position and mixture hash, mark the checkpoint complete, then
    delete the checkpoints beyond `save_total_limit`.

    The Trainer has written model, optimizer, scheduler, RNG and trainer state when `on_save`
    runs; a barrier makes sure every process has written its shard before the main process
    writes `mixtune_state.json` and, last, the `COMPLETE` marker. Only then are older checkpoints
    deleted (the Trainer's own rotation, which runs before `on_save`, is switched off).
    """

    def __init__(self, *, start_step: int, start_position: int, global_batch_size: int, world_size: int,
                 mixture_hash: str, mixture_size: int | None = None, save_total_limit: int | None = None,
                 schedule: dict[str, Any] | None = None) -> None:
        self.mixture_size = mixture_size
        self.save_total_limit = save_total_limit
        self.schedule = schedule
        self.start_step = start_step
        self.start_position = start_position
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.mixture_hash = mixture_hash
        self.mixing_state: Callable[[], dict[str, Any]] | None = None  # set by an online mixture

    def position_at(self, global_step: int) -> int:
        """Stream position after `global_step` optimizer steps of this run."""
        return stream_position(global_step, start_step=self.start_step, start_position=self.start_position,
                               global_batch_size=self.global_batch_size)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the Trainer counts epochs of this run's dataloader; report passes over the mixture instead
        if self.mixture_size:
            state.epoch = self.position_at(state.global_step) / self.mixture_size

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            mark_complete(folder, StreamState(
                global_step=state.global_step, position=self.position_at(state.global_step),
                mixture_hash=self.mixture_hash, global_batch_size=self.global_batch_size,
                world_size=self.world_size, schedule=self.schedule,
                mixing=self.mixing_state() if self.mixing_state else None))
            rotate(args.output_dir, self.save_total_limit, protect=state.best_model_checkpoint)
        barrier()


class TextLogCallback(TrainerCallback):
    """Write every log record (loss, learning rate, ...) as a line of train.log (`mixtune.train.run_log`)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            from mixtune.train.run_log import note

            note(f"step {state.global_step}: {json.dumps(logs, default=str)}")


class NanPolicyCallback(TrainerCallback):
    """Stop the run when a logged loss is NaN or infinite (`training.on_nan: stop`)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise MixtuneError(f"the training loss is {loss} at step {state.global_step}",
                               field="training.on_nan",
                               hint="lower training.learning_rate, check the data, or resume from the last "
                               "checkpoint")


class StaleCheckpointCallback(TrainerCallback):
    """Before a save, remove a leftover `checkpoint-N` folder of the same step (an interrupted save or
    an earlier run), so the new save never mixes with old files or inherits an old marker."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not control.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.exists():
            delete_checkpoint(folder)  # renamed out of the checkpoint namespace first
        barrier()


class MixtureLogCallback(TrainerCallback):
    """Record the mixture hash and per-task example counts in the wandb run config."""

    def __init__(self, mixture_hash: str, task_counts: dict[str, int]) -> None:
        self.mixture_hash = mixture_hash
        self.task_counts = task_counts

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.config.update({"mixture_hash": self.mixture_hash, "mixture_task_counts": self.task_counts},
                                allow_val_change=True)
