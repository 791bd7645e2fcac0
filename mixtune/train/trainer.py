"""Building the transformers trainer for a recipe: training arguments, collator, trainer class.

Causal models train with `transformers.Trainer` and mixtune's completion-only (or packing)
collator; seq2seq models with `Seq2SeqTrainer` and the seq2seq collator. TRL's SFTTrainer is not
used: it tokenises a dataset up front, while mixtune streams examples by position from the mixture
plan (O(1) resume), and TRL has no encoder-decoder path.

Arguments that make the Trainer follow mixtune's stream instead of its own epoch bookkeeping:
`max_steps` always set, `ignore_data_skip=True` (the stream starts at the saved position, nothing
is skipped), `dispatch_batches=False` (each process collates its own share of the global batch)
and `remove_unused_columns=False` (the dataset yields positions, not columns).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mixtune.recipe import Recipe
from mixtune.secrets import redact_text
from mixtune.train.deepspeed import deepspeed_config, from_launcher_env


def build_training_arguments(recipe: Recipe, *, max_steps: int, kind: str) -> Any:
    """TrainingArguments (Seq2SeqTrainingArguments for seq2seq) from the recipe's sections."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    t, lg = recipe.training, recipe.logging
    _collective_timeout(recipe.distributed.timeout_s)
    if lg.wandb == "disabled":
        report_to: list[str] = []
    else:
        os.environ["WANDB_MODE"] = lg.wandb
        os.environ.setdefault("WANDB_DIR", recipe.output_dir)
        os.makedirs(recipe.output_dir, exist_ok=True)
        report_to = ["wandb"]
    warmup: float = t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio
    precision = t.precision  # mixed precision over the weights' storage dtype (model.dtype)
    cls = Seq2SeqTrainingArguments if kind == "seq2seq" else TrainingArguments
    return cls(
        output_dir=recipe.output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # mixtune rotates after marking complete (CheckpointStateCallback)
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=t.on_nan != "stop",
        report_to=report_to,
        project=lg.project,
        run_name=redact_text(lg.run_name or _default_run_name(recipe)),  # kept in training_args.bin, wandb
        disable_tqdm=not lg.progress_bar,
        ignore_data_skip=True,
        remove_unused_columns=False,
        accelerator_config={"dispatch_batches": False, "split_batches": False},
        # the collator formats, tokenizes and packs in these worker processes (mixtune.train.data)
        dataloader_num_workers=data_workers(recipe),
        dataloader_prefetch_factor=4 if data_workers(recipe) else None,
        dataloader_persistent_workers=bool(data_workers(recipe)),
        dataloader_pin_memory=_has_accelerator(),
        deepspeed=(deepspeed_config(recipe.distributed.deepspeed, recipe_path=recipe.source)
                   or from_launcher_env()),
        ddp_timeout=recipe.distributed.timeout_s,
        use_cpu=not _has_accelerator(),  # on CPU, several processes need accelerate's gloo setup
    )


def data_workers(recipe: Recipe) -> int:
    """DataLoader worker processes: `data.num_workers`, by default 2 with a GPU (so the data path keeps
    up with it, see bench/bench_data.py) and 0 on CPU (where the trainer itself needs the cores)."""
    if recipe.data.num_workers is not None:
        return recipe.data.num_workers
    return 2 if _has_accelerator() else 0


def _collective_timeout(seconds: int) -> None:
    """Make `seconds` the timeout of every process group created from now on.

    `ddp_timeout` alone does not reach all of them: accelerate's CPU (gloo) set-up creates the default
    group without it, and DeepSpeed creates its data-parallel groups with torch's default (30 min), so
    a hung process would stall the others for half an hour. torch reads this default at group creation.
    """
    from datetime import timedelta

    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timedelta(seconds=seconds)


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def _default_run_name(recipe: Recipe) -> str:
    from pathlib import Path

    return Path(recipe.source).stem if recipe.source else Path(recipe.output_dir).name


def build_collator(recipe: Recipe, model: Any, tokenizer: Any, kind: str) -> Any:
    """The model-specific collator: examples (prompt, completion) -> tensors with the loss mask."""
    import torch

    from mixtune.train.collators import CompletionOnlyCollator, Seq2SeqCollator
    from mixtune.train.packing import PackingCollator, packing_layout

    d = recipe.data
    chat = recipe.model.chat_template is not None
    if kind == "seq2seq":
        return Seq2SeqCollator(tokenizer, model, max_source_length=d.max_source_length,
                               max_target_length=d.max_target_length)
    if d.packing:
        attn = recipe.model.attn_implementation
        # eager adds the mask to scores in the compute dtype; sdpa takes a boolean mask
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.model.dtype, torch.float32)
        return PackingCollator(tokenizer, max_length=d.max_length, chat=chat, max_source_length=d.max_source_length,
                               layout=packing_layout(attn), mask_dtype=compute if attn == "eager" else torch.bool)
    return CompletionOnlyCollator(tokenizer, max_length=d.max_length, chat=chat,
                                  max_source_length=d.max_source_length)


def build_trainer(*, model: Any, tokenizer: Any, kind: str, args: Any, train_dataset: Any,
                  data_collator: Any, callbacks: list[Any], resume_from: str | Path | None = None) -> Any:
    """A Trainer (causal) or Seq2SeqTrainer (seq2seq) over the position stream.

    With a `NanGuardCallback` among the callbacks, under DeepSpeed every micro-batch's loss is
    checked before its backward (the engine updates the weights inside backward, out of the
    callback's reach); elsewhere the callback checks the gradients before the optimizer step.

    Resuming from `resume_from`: the checkpoint's RNG state (Python, NumPy, torch CPU and CUDA, this
    process's file) is restored again just before the first resumed step, so dropout draws exactly
    what an uninterrupted run draws; the optimizer's learning rate is set from the (possibly changed)
    schedule at the resumed step; a checkpoint file that cannot be loaded safely is a ConfigError.
    """
    from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

    from mixtune.io import safetensors_write_errors
    from mixtune.train.checkpoint import readable
    from mixtune.train.nan_guard import NanGuardCallback
    from mixtune.train.task_losses import TASK_IDS_KEY, TaskLossCallback

    base = Seq2SeqTrainer if kind == "seq2seq" else Trainer
    guard = next((c for c in callbacks if isinstance(c, NanGuardCallback)), None)
    task_losses = next((c for c in callbacks if isinstance(c, TaskLossCallback)), None)

    class MixtuneTrainer(base):  # type: ignore[misc, valid-type]
        def _prepare_inputs(self, inputs: Any) -> Any:
            inputs = super()._prepare_inputs(inputs)
            if "packed_segment_ids" in inputs:  # flex attention: the packed rows' BlockMask, on the device
                from mixtune.train.packing import flex_block_mask

                inputs["attention_mask"] = flex_block_mask(inputs.pop("packed_segment_ids"))
            return inputs

        def compute_loss(self, model: Any, inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            task_ids = inputs.pop(TASK_IDS_KEY, None)
            if task_losses is not None and task_ids is not None and model.training:
                result = self._compute_loss_per_task(model, inputs, task_ids, *rest, **kwargs)
            else:
                result = super().compute_loss(model, inputs, *rest, **kwargs)
            if guard is not None and self.is_deepspeed_enabled and model.training:
                guard.check_loss(result[0] if isinstance(result, tuple) else result, self.state.global_step + 1)
            return result

        def _compute_loss_per_task(self, model: Any, inputs: Any, task_ids: Any, return_outputs: bool = False,
                                   **kwargs: Any) -> Any:
            """The usual loss; the forward's logits also feed the per-task losses (no second forward)."""
            labels = inputs["labels"]
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
            shift = getattr(self, "_loss_shifts_labels", kind != "seq2seq")
            task_losses.add(outputs["logits"], labels, task_ids, shift=shift)
            return (loss, outputs) if return_outputs else loss

        def _load_rng_state(self, checkpoint: str | None) -> None:
            name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
            with readable(checkpoint or "", name):
                super()._load_rng_state(checkpoint)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            with readable(resume_from_checkpoint, "model.safetensors"):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            failing = functools.partial(_failing_file, checkpoint, ("scheduler.pt", "scaler.pt"), "optimizer.pt")
            with readable(checkpoint or "", failing):
                super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                _lr_from_schedule(self.optimizer, self.lr_scheduler)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            with safetensors_write_errors(Path(output_dir or self.args.output_dir) / "model.safetensors"):
                super()._save(output_dir, state_dict)

    class RestoreRngAtFirstStep(TrainerCallback):
        """The Trainer restores the RNG state before it starts the epoch's data iterator, which draws
        from torch's generator: restore it once more when the first resumed step begins."""

        def __init__(self) -> None:
            self.checkpoint = str(resume_from) if resume_from else None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.checkpoint is not None:
                trainer._load_rng_state(self.checkpoint)
                self.checkpoint = None

    loss_func = token_mean_loss if kind == "seq2seq" and not honours_num_items(model) else None
    trainer = MixtuneTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                             processing_class=tokenizer, callbacks=[*callbacks, RestoreRngAtFirstStep()],
                             compute_loss_func=loss_func)
    return trainer


def honours_num_items(model: Any) -> bool:
    """Whether the model's own loss divides by `num_items_in_batch` (its forward names the argument).

    transformers' encoder-decoders (T5, BART, EncoderDecoderModel) accept `**kwargs`, so the Trainer
    passes them `num_items_in_batch` and takes their loss as already scaled for gradient accumulation,
    but their loss is the micro-batch's mean: with accumulation the logged loss and the gradients would
    be the sum of the micro-batch means (x accumulation steps; x processes with
    `average_tokens_across_devices`).
    """
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    return "num_items_in_batch" in inspect.signature(base.forward).parameters


def token_mean_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy summed over a micro-batch's label tokens, divided by the label tokens of the whole
    accumulated batch (all processes): the token-weighted mean that models honouring `num_items_in_batch`
    return, for the seq2seq models whose own loss does not."""
    import torch
    import torch.nn.functional as F

    logits = outputs["logits"]
    labels = labels.to(logits.device)
    total = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    return total / torch.as_tensor(count, device=total.device).clamp_min(1)


def _failing_file(checkpoint: str | None, small: tuple[str, ...], default: str) -> str:
    """Which of a checkpoint's torch files fails to load: the small ones are tried, else `default`."""
    import torch

    for name in small:
        path = Path(checkpoint or "") / name
        if path.is_file():
            try:
                torch.load(path, weights_only=True, map_location="cpu")
            except Exception:  # noqa: BLE001 - any failure names this file
                return name
    return default


def _lr_from_schedule(optimizer: Any, scheduler: Any) -> None:
    """Set each parameter group's learning rate to the schedule's value at the restored step.

    The optimizer's saved state holds the learning rate of the step it was saved at, and the
    scheduler only updates it after the next step: with a changed schedule (more steps, another
    warmup) the first resumed step would run at the old curve's value (0.0 at the end of a linear
    decay). With an unchanged schedule this writes the very same values.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if optimizer is None or not lambdas or not hasattr(scheduler, "base_lrs"):
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
