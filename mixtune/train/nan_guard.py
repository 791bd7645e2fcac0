"""Stop (or skip) an optimizer step whose loss or gradients are NaN/inf, naming the step and its tasks.

`NanGuardCallback` looks at the gradients right before every optimizer step (after clipping, in
`on_pre_optimizer_step`), so a non-finite loss never reaches the weights:

- `stop`: raise a MixtuneError naming the step and the tasks of that step's batch (from the mixture
  plan and the stream position), before the weights change; the last checkpoint stays good;
- `skip`: drop the step's gradients (the optimizer leaves every parameter and its moments alone),
  log the same message, and go on; more than `max_consecutive_skips` skipped steps in a row stop
  the run, since then the model itself has diverged.

With fp16 loss scaling (a GradScaler on the optimizer, training.precision: fp16), non-finite
gradients are first the scaler's ordinary overflow: the scaler itself skips that update and lowers
its scale, so the guard only records the step (`overflow_skips`) and goes on, with either policy;
more than `max_consecutive_skips` overflows in a row mean a real divergence and stop the run.

Under DeepSpeed the gradients live in the engine's partitions, not in `param.grad`, and the engine
applies the update inside backward. There the trainer checks every micro-batch's loss before its
backward instead (`check_loss`, one all-reduced flag, so every rank stops together): a non-finite loss
stops the run before the weights change, with either policy, since DeepSpeed offers no way to skip
an update whose backward has begun.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import torch
from transformers import TrainerCallback

from mixtune.errors import MixtuneError
from mixtune.train.data import stream_position

logger = logging.getLogger(__name__)

NanPolicy = Literal["stop", "skip"]

HINT = "lower training.learning_rate, check these tasks' data, or resume from the last checkpoint"


class NonFiniteLossError(MixtuneError):
    """The loss or the gradients of a training step are NaN or infinite."""


class NanGuardCallback(TrainerCallback):
    """Check every step's gradients before the optimizer applies them (see the module doc)."""

    def __init__(self, plan: Any, *, policy: NanPolicy = "stop", start_step: int = 0, start_position: int = 0,
                 global_batch_size: int, max_consecutive_skips: int = 10) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"unknown NaN policy {policy!r} (stop or skip)")
        self.plan = plan
        self.policy = policy
        self.start_step = start_step
        self.start_position = start_position
        self.global_batch_size = global_batch_size
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped: list[int] = []
        self.overflow_skips: list[int] = []
        self._consecutive = 0

    def batch_tasks(self, step: int) -> Counter[str]:
        """Task -> number of examples in the global batch of optimizer step `step` (1-based)."""
        lo = stream_position(step - 1, start_step=self.start_step, start_position=self.start_position,
                             global_batch_size=self.global_batch_size)
        size = len(self.plan)
        positions = [(lo + k) % size for k in range(self.global_batch_size)]
        names = [self.plan.tasks[int(self.plan.index.task_ids[p])].name for p in positions]
        return Counter(names)

    def message(self, step: int) -> str:
        """The text that names the step and its batch's tasks."""
        tasks = ", ".join(f"{t} ({n})" for t, n in sorted(self.batch_tasks(step).items()))
        return f"the loss or gradients are NaN/inf at step {step}; the batch's tasks (examples): {tasks}"

    def check_loss(self, loss: torch.Tensor, step: int) -> None:
        """Raise NonFiniteLossError on every rank when any rank's loss for `step` is NaN/inf."""
        import torch.distributed as dist

        finite = torch.isfinite(loss.detach().float()).all().to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 1.0:
            return
        note = " (under DeepSpeed a step cannot be skipped, so training.on_nan: skip stops too)" \
            if self.policy == "skip" else ""
        raise NonFiniteLossError(self.message(step) + note, field="training.on_nan", hint=HINT)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])
        if bool(torch.isfinite(norms).all()):
            self._consecutive = 0
            return
        step = state.global_step + 1
        text = self.message(step)
        hint = f"{HINT}; training.on_nan: skip drops such steps"
        scaler = getattr(kwargs.get("optimizer"), "scaler", None)
        if scaler is not None and scaler.is_enabled():
            self._consecutive += 1
            if self._consecutive > self.max_consecutive_skips:
                raise NonFiniteLossError(f"{text}: {self._consecutive} loss-scaler overflows in a row (scale "
                                         f"{scaler.get_scale():g}): the model has diverged", field="training.on_nan",
                                         hint=HINT)
            self.overflow_skips.append(step)
            logger.info("step %d: fp16 gradients overflowed; the loss scaler skips this update and lowers its "
                        "scale (%g)", step, scaler.get_scale())
            return
        if self.policy == "stop":
            raise NonFiniteLossError(text, field="training.on_nan", hint=hint)
        self._consecutive += 1
        if self._consecutive > self.max_consecutive_skips:
            raise NonFiniteLossError(f"{text} ({self._consecutive} steps in a row: the model has diverged)",
                                     field="training.on_nan", hint=hint)
        for p in model.parameters():
            p.grad = None
        self.skipped.append(step)
        logger.warning("%s: step skipped (training.on_nan: skip)", text)
