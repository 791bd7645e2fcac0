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

import os
from typing import Any

from mixtune.recipe import Recipe
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
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=t.on_nan != "stop",
        report_to=report_to,
        project=lg.project,
        run_name=lg.run_name or _default_run_name(recipe),
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
                  data_collator: Any, callbacks: list[Any]) -> Any:
    """A Trainer (causal) or Seq2SeqTrainer (seq2seq) over the position stream.

    With a `NanGuardCallback` among the callbacks, under DeepSpeed every micro-batch's loss is
    checked before its backward (the engine updates the weights inside backward, out of the
    callback's reach); elsewhere the callback checks the gradients before the optimizer step.
    """
    from transformers import Seq2SeqTrainer, Trainer

    from mixtune.train.nan_guard import NanGuardCallback

    base = Seq2SeqTrainer if kind == "seq2seq" else Trainer
    guard = next((c for c in callbacks if isinstance(c, NanGuardCallback)), None)

    class MixtuneTrainer(base):  # type: ignore[misc, valid-type]
        def _prepare_inputs(self, inputs: Any) -> Any:
            inputs = super()._prepare_inputs(inputs)
            if "packed_segment_ids" in inputs:  # flex attention: the packed rows' BlockMask, on the device
                from mixtune.train.packing import flex_block_mask

                inputs["attention_mask"] = flex_block_mask(inputs.pop("packed_segment_ids"))
            return inputs

        def compute_loss(self, model: Any, inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            result = super().compute_loss(model, inputs, *rest, **kwargs)
            if guard is not None and self.is_deepspeed_enabled and model.training:
                guard.check_loss(result[0] if isinstance(result, tuple) else result, self.state.global_step + 1)
            return result

    return MixtuneTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                          processing_class=tokenizer, callbacks=callbacks)
