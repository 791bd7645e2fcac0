"""One training run from a recipe: setup, train, save the final model.

Features and the recipe keys that control them:

- model (`model:`): hub/local model or a config-built tiny one, dtype, LoRA, gradient checkpointing;
- data (`data:`): the mixture plan streamed by position (`mixtune.train.data`); loss on the
  completion only; packing (`data.packing`); the mixture's held-out guard refuses held-out tasks;
- optimisation (`training:`): AdamW, schedule, warmup, `max_steps` or `epochs`, batch sizes;
- DeepSpeed ZeRO (`distributed.deepspeed`): a preset or a JSON file;
- checkpoints every `training.save_steps`, completed by a marker; `resume:` auto/never/path
  continues from the saved stream position in O(1), also with another number of processes;
- logging (`logging:`): wandb (offline by default), `output_dir/train.log`, progress bar;
- outputs: `output_dir/checkpoint-N/`, `output_dir/final/` (plain HF format + `mixtune_run.json`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.recipe import Recipe, recipe_dict
from mixtune.train import checkpoint as ckpt
from mixtune.train.callbacks import (
    CheckpointStateCallback,
    MixtureLogCallback,
    NanPolicyCallback,
    StaleCheckpointCallback,
    TextLogCallback,
)
from mixtune.train.data import PositionStream, StreamCollator, global_batch_size
from mixtune.train.deepspeed import zero_stage

logger = logging.getLogger(__name__)

FINAL = "final"
RUN_FILE = "mixtune_run.json"


def plan_for(recipe: Recipe) -> Any:
    """The recipe's mixture plan (raises HeldOutError when it would train on held-out tasks)."""
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    return plan_mixture(load_mixture(recipe.data.mixture, collection=recipe.data.collection))


def total_steps(recipe: Recipe, plan_size: int, global_batch: int) -> int:
    """Optimizer steps of the run: `training.max_steps`, else `epochs` passes over the plan."""
    if recipe.training.max_steps is not None:
        return recipe.training.max_steps
    epochs = recipe.training.epochs if recipe.training.epochs is not None else 1.0
    return max(1, math.ceil(epochs * plan_size / global_batch))


def run_training(recipe: Recipe, *, order_log: str | Path | None = None) -> Path:
    """Train as the recipe says; returns the final model folder. Works under any launcher."""
    from transformers import set_seed

    output_dir = Path(recipe.output_dir)
    plan = plan_for(recipe)
    if len(plan) == 0:
        raise ConfigError("the mixture has no examples", path=recipe.source, field="data.mixture")

    # The plan's world size is known once the training arguments have set up the processes.
    from mixtune.train.modeling import known_kind
    from mixtune.train.trainer import build_collator, build_trainer, build_training_arguments

    kind_hint = known_kind(recipe.model) or "causal"
    probe = build_training_arguments(recipe, max_steps=1, kind=kind_hint)
    world = probe.world_size
    g_batch = global_batch_size(recipe.training.per_device_batch_size,
                                recipe.training.gradient_accumulation_steps, world)
    max_steps = total_steps(recipe, len(plan), g_batch)
    args = build_training_arguments(recipe, max_steps=max_steps, kind=kind_hint)
    is_main = args.process_index == 0
    if args.deepspeed and world > 1:
        _init_deepspeed_comm()

    resume_from, start_step, start_position = resume_point(recipe, plan.hash, max_steps, world=world,
                                                           deepspeed=_uses_deepspeed(args))
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if recipe.resume != "never":
            ckpt.remove_incomplete(output_dir)
    log_path = output_dir / recipe.logging.log_file
    text_log = TextLogCallback(log_path)
    if is_main:
        _attach_file_log(log_path)
        text_log.write(f"mixture {plan.spec.name!r} hash {plan.hash}: {len(plan)} examples, "
                       f"{len(plan.tasks)} tasks; world size {world}, global batch {g_batch}, {max_steps} steps")
        text_log.write(("resuming from " + str(resume_from) + f" at step {start_step}, stream position "
                        f"{start_position}") if resume_from else "starting fresh")

    if is_main and "wandb" in args.report_to:
        _start_wandb(recipe, args.run_name)
    set_seed(recipe.training.seed)
    from mixtune.train.modeling import load_model_and_tokenizer

    model, tokenizer, kind = load_model_and_tokenizer(recipe.model)
    if kind != kind_hint:
        args = build_training_arguments(recipe, max_steps=max_steps, kind=kind)
    collate = build_collator(recipe, model, tokenizer, kind)
    # prompts come whole from the plan; the collator fits them to the budgets in token space
    collator = StreamCollator(plan, collate, order_log=order_log, rank=args.process_index)
    stream = PositionStream(start_position, start_position + (max_steps - start_step) * g_batch,
                            micro_batch=recipe.training.per_device_batch_size * world)
    callbacks = _callbacks(recipe, plan, text_log, start_step=start_step, start_position=start_position,
                           global_batch=g_batch, world=world, stop_position=stream.stop)
    heldout = None
    if recipe.eval is not None:
        from mixtune.eval.callback import HeldOutEvalCallback

        heldout = HeldOutEvalCallback(recipe.eval, tokenizer)
        callbacks.append(heldout)
    trainer = build_trainer(model=model, tokenizer=tokenizer, kind=kind, args=args, train_dataset=stream,
                            data_collator=collator, callbacks=callbacks)
    if heldout is not None:
        heldout.bind(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    end_position = start_position + (max_steps - start_step) * g_batch
    info = {
        "recipe": recipe_dict(recipe),
        "recipe_file": recipe.source,
        "mixture": plan.summary(),
        "mixture_hash": plan.hash,
        "trained_examples": end_position,
        "trained_task_counts": trained_task_counts(plan, end_position),
        "global_steps": max_steps,
        "world_size": world,
        "zero_stage": zero_stage(args.deepspeed) if isinstance(args.deepspeed, dict) else None,
        "global_batch_size": g_batch,
        "resumed_from": str(resume_from) if resume_from else None,
        "git_commit": git_commit(),
        "metrics": result.metrics,
        "kind": kind,
    }
    if heldout is not None:
        info["heldout_eval"] = {"best": heldout.best, "history": heldout.history}
    final = save_final(trainer, tokenizer, output_dir, info)
    if is_main:
        text_log.write(f"final model saved to {final}; trained on {end_position} examples")
    _finish_wandb()
    _detach_file_log()
    return final


def _start_wandb(recipe: Recipe, run_name: str | None) -> None:
    """Open this run's wandb run under output_dir/wandb (the Trainer's callback then logs to it).

    Opened here rather than by the callback because wandb reads WANDB_DIR only once per process: a
    second run in the same process would otherwise write into the first run's folder.
    """
    import wandb

    from mixtune.secrets import redact

    wandb.init(project=recipe.logging.project, name=run_name, dir=recipe.output_dir,
               mode=recipe.logging.wandb, config={"recipe": redact(recipe_dict(recipe))}, reinit="finish_previous")


def _finish_wandb() -> None:
    """Close the wandb run (flushes an offline run to disk) when one is open."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _uses_deepspeed(args: Any) -> bool:
    """DeepSpeed from the recipe (`distributed.deepspeed`) or from `accelerate launch --use_deepspeed`."""
    return bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def check_deepspeed_resume(recipe: Recipe, checkpoint: Path, saved: int, *, world: int, deepspeed: bool) -> None:
    """Refuse to resume a DeepSpeed checkpoint (saved by `saved` processes) without DeepSpeed or on another count.

    Its optimizer state is partitioned per process (`global_step*/`, no `optimizer.pt`): without
    DeepSpeed the Trainer would silently start a fresh optimizer, and DeepSpeed itself refuses another
    data-parallel size deep in its loader.
    """
    if not any(p.is_dir() for p in checkpoint.glob("global_step*")):
        return
    if deepspeed and saved == world:
        return
    now = f"{world} process(es)" + ("" if deepspeed else " without DeepSpeed")
    raise ConfigError(
        f"{checkpoint} holds DeepSpeed ZeRO state saved by {saved} process(es); this launch has {now}",
        path=recipe.source, field="resume",
        hint=f"relaunch with DeepSpeed on {saved} processes to resume exactly, or start a new run from its "
             f"weights: model.name_or_path={checkpoint} resume=never output_dir=<new folder>")


def resume_point(recipe: Recipe, mixture_hash: str, max_steps: int, *, world: int,
                 deepspeed: bool) -> tuple[Path | None, int, int]:
    """(checkpoint or None, its step, its stream position) for the recipe's `resume:`; checks the mixture
    and that a DeepSpeed checkpoint fits this launch (`check_deepspeed_resume`)."""
    resume_from = ckpt.resolve_resume(recipe.resume, recipe.output_dir, recipe_path=recipe.source)
    if resume_from is None:
        return None, 0, 0
    state = ckpt.read_state(resume_from)
    if state.mixture_hash != mixture_hash:
        raise ConfigError(
            f"the mixture changed since {resume_from} was saved (hash {state.mixture_hash} -> {mixture_hash})",
            path=recipe.source, field="data.mixture",
            hint="restore the mixture, or start fresh with resume=never or another output_dir")
    if state.global_step >= max_steps:
        raise ConfigError(f"{resume_from} is already at step {state.global_step} of {max_steps}",
                          path=recipe.source, field="training.max_steps",
                          hint="raise training.max_steps (or epochs) to train further")
    check_deepspeed_resume(recipe, resume_from, state.world_size, world=world, deepspeed=deepspeed)
    return resume_from, state.global_step, state.position


def _callbacks(recipe: Recipe, plan: Any, text_log: TextLogCallback, *, start_step: int, start_position: int,
               global_batch: int, world: int, stop_position: int) -> list[Any]:
    from mixtune.train.nan_guard import NanGuardCallback

    callbacks: list[Any] = [
        StaleCheckpointCallback(),
        CheckpointStateCallback(start_step=start_step, start_position=start_position, global_batch_size=global_batch,
                                world_size=world, mixture_hash=plan.hash, mixture_size=len(plan)),
        text_log,
        MixtureLogCallback(plan.hash, trained_task_counts(plan, stop_position)),
        NanGuardCallback(plan, policy=recipe.training.on_nan, start_step=start_step,
                         start_position=start_position, global_batch_size=global_batch),
    ]
    if recipe.training.on_nan == "stop":
        callbacks.append(NanPolicyCallback())  # the logged loss too (DeepSpeed keeps gradients to itself)
    return callbacks


def trained_task_counts(plan: Any, stop_position: int) -> dict[str, int]:
    """How many examples of each task the stream positions [0, stop_position) hold."""
    import numpy as np

    size = len(plan)
    task_ids = plan.index.task_ids
    full, rest = divmod(stop_position, size)
    counts = np.bincount(task_ids, minlength=len(plan.tasks)) * full
    counts = counts + np.bincount(task_ids[:rest], minlength=len(plan.tasks))
    return {t.name: int(c) for t, c in zip(plan.tasks, counts, strict=True) if c}


def git_commit() -> str | None:
    """The commit of the mixtune checkout (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _init_deepspeed_comm() -> None:
    """Let DeepSpeed's comm layer wrap the process group accelerate opened (gloo on CPU), so ZeRO-3's
    sharded model construction sees every process."""
    import deepspeed
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_initialized() else None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_final(trainer: Any, tokenizer: Any, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write output_dir/final atomically: weights (ZeRO-3 shards gathered), tokenizer, mixtune_run.json.

    Every process takes part (gathering ZeRO-3 shards is collective); the main process fills a
    temporary folder and renames it into place, so `final/` is either complete or absent.
    """
    from mixtune.io import atomic_write_json
    from mixtune.secrets import redact

    final = output_dir / FINAL
    tmp = output_dir / f".{FINAL}.partial"
    is_main = trainer.args.process_index == 0
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    model = trainer.model
    lora = hasattr(model, "peft_config")
    if lora:
        trainer.save_model(str(tmp / "adapter"))
        info["lora"] = {"adapter": "adapter/", "merged": False}
        if trainer.is_deepspeed_enabled:
            info["lora"]["note"] = "ZeRO-3 training: only the adapter is saved; merge it with peft after loading"
        elif is_main:
            merged = model.merge_and_unload()
            merged.save_pretrained(str(tmp), safe_serialization=True)
            info["lora"]["merged"] = True
    else:
        trainer.save_model(str(tmp))
    _barrier()
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / RUN_FILE, redact(info), default=str)
        old = output_dir / f".{FINAL}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


_FILE_LOG: list[logging.Handler] = []  # the text-log handler of the run in progress (one run per process)


def _attach_file_log(path: Path) -> None:
    """Send mixtune's and transformers' log records to the run's text log (main process)."""
    from mixtune.secrets import RedactingFilter

    _detach_file_log()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())
    logging.getLogger("mixtune").addHandler(handler)
    _transformers_logger().addHandler(handler)
    _FILE_LOG.append(handler)


def _detach_file_log() -> None:
    while _FILE_LOG:
        handler = _FILE_LOG.pop()
        logging.getLogger("mixtune").removeHandler(handler)
        _transformers_logger().removeHandler(handler)
        handler.close()


def _transformers_logger() -> logging.Logger:
    import transformers

    return transformers.utils.logging.get_logger("transformers")
