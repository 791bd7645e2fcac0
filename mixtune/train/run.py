"""One training run from a recipe: setup, train, save the final model.

Features and the recipe keys that control them:

- model (`model:`): hub/local model or a config-built tiny one, dtype, LoRA, gradient checkpointing;
- data (`data:`): the mixture plan streamed by position (`mixtune.train.data`); loss on the
  completion only; packing (`data.packing`); the mixture's held-out guard refuses held-out tasks;
- optimisation (`training:`): AdamW, schedule, warmup, `max_steps` or `epochs`, batch sizes;
- DeepSpeed ZeRO (`distributed.deepspeed`): a preset or a JSON file;
- checkpoints every `training.save_steps`, completed by a marker; `resume:` auto/never/path
  continues from the saved stream position in O(1), also with another number of processes;
- logging (`logging:`): wandb (offline by default), `output_dir/train.log`, progress bar; the training
  loss per task, category and source at every logging step in `output_dir/losses.jsonl`;
- outputs: `output_dir/checkpoint-N/`, `output_dir/final/` (plain HF format + `mixtune_run.json`),
  `output_dir/training_report.md` (`mixtune.train.report`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
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
from mixtune.train.output_dir import check_output_dir, hold

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
    """Train as the recipe says; returns the final model folder. Works under any launcher.

    The main process holds `output_dir`'s lock for the whole run (a second run on it is refused).
    """
    output_dir = check_output_dir(recipe.output_dir, recipe_path=recipe.source)
    main = int(os.environ.get("RANK", "0")) == 0
    with hold(output_dir, recipe_path=recipe.source) if main else contextlib.nullcontext():
        return _train(recipe, output_dir, order_log)


def _train(recipe: Recipe, output_dir: Path, order_log: str | Path | None) -> Path:
    from transformers import set_seed

    from mixtune.console import phase

    show = recipe.logging.progress_bar and int(os.environ.get("RANK", "0")) == 0
    with phase(f"planning mixture {recipe.data.mixture}", enabled=show):
        plan = plan_for(recipe)
    if len(plan) == 0:
        raise ConfigError("the mixture has no examples", path=recipe.source, field="data.mixture")

    # The plan's world size is known once the training arguments have set up the processes.
    from mixtune.models.kind import model_kind
    from mixtune.train.launch import check_cpu_deepspeed_launch
    from mixtune.train.trainer import (
        _has_accelerator,
        build_collator,
        build_trainer,
        build_training_arguments,
    )

    check_cpu_deepspeed_launch(recipe, has_accelerator=_has_accelerator())
    kind_hint = model_kind(recipe.model) or "causal"
    probe = build_training_arguments(recipe, max_steps=1, kind=kind_hint)
    world = probe.world_size
    g_batch = global_batch_size(recipe.training.per_device_batch_size,
                                recipe.training.gradient_accumulation_steps, world)
    max_steps = total_steps(recipe, len(plan), g_batch)
    args = build_training_arguments(recipe, max_steps=max_steps, kind=kind_hint)
    is_main = args.process_index == 0
    if args.deepspeed and world > 1:
        _init_deepspeed_comm()

    finished = finished_run(recipe, plan.hash, max_steps)
    if finished is not None:
        if is_main:
            logger.warning("%s", finished)
        return output_dir / FINAL
    resume_from, state = resume_point(recipe, plan.hash, max_steps, world=world, deepspeed=_uses_deepspeed(args))
    start_step, start_position = (state.global_step, state.position) if state else (0, 0)
    schedule = schedule_of(recipe, max_steps)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if recipe.resume == "never":
            _start_over(output_dir)
        else:
            ckpt.remove_incomplete(output_dir)
    log_path = output_dir / recipe.logging.log_file
    text_log = TextLogCallback(log_path)
    if is_main:
        _attach_file_log(log_path)
        header = run_header(recipe, plan, world=world, global_batch=g_batch, max_steps=max_steps)
        text_log.write(header)
        from mixtune.secrets import redact_text

        print(redact_text(header), file=sys.stderr, flush=True)  # on the console too, whatever the logging set-up
        text_log.write(("resuming from " + str(resume_from) + f" at step {start_step}, stream position "
                        f"{start_position}") if resume_from else "starting fresh")
        changed = schedule_change(state, schedule, resume_from) if state else None
        if changed:
            logger.warning("%s", changed)
            text_log.write("WARNING " + changed)
        if resume_from and start_step == max_steps:
            logger.warning("%s is at the last step (%d) but %s/ is missing (its save was interrupted): "
                           "writing %s/ from it", resume_from, max_steps, FINAL, FINAL)

    if is_main and "wandb" in args.report_to:
        _start_wandb(recipe, args.run_name)
    set_seed(recipe.training.seed)
    from mixtune.models.load import context_length, load_model_and_tokenizer

    with phase("loading the model", enabled=show and is_main):
        model, tokenizer, kind = load_model_and_tokenizer(recipe.model)
    if kind != kind_hint:
        args = build_training_arguments(recipe, max_steps=max_steps, kind=kind)
    collate = build_collator(recipe, model, tokenizer, kind)
    limit, length_field = context_length(model.config), _length_field(kind)
    _check_length(recipe, limit, length_field)
    # prompts come whole from the plan; the collator fits them to the budgets in token space
    collator = StreamCollator(plan, collate, order_log=order_log, rank=args.process_index, max_positions=limit,
                              length_field=length_field, task_ids=True)
    stream = PositionStream(start_position, start_position + (max_steps - start_step) * g_batch,
                            micro_batch=recipe.training.per_device_batch_size * world)
    callbacks = _callbacks(recipe, plan, text_log, start_step=start_step, start_position=start_position,
                           global_batch=g_batch, world=world, stop_position=stream.stop, schedule=schedule)
    heldout = None
    if recipe.eval is not None:
        from mixtune.eval.callback import HeldOutEvalCallback

        heldout = HeldOutEvalCallback(recipe.eval, tokenizer, progress=recipe.logging.progress_bar)
        callbacks.append(heldout)
    trainer = build_trainer(model=model, tokenizer=tokenizer, kind=kind, args=args, train_dataset=stream,
                            data_collator=collator, callbacks=callbacks, resume_from=resume_from)
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
    with phase(f"saving the final model to {output_dir / FINAL}", enabled=show and is_main):
        final = save_final(trainer, tokenizer, output_dir, info)
    if is_main:
        text_log.write(f"final model saved to {final}; trained on {end_position} examples")
        _write_report(output_dir, text_log)
    _finish_wandb()
    _detach_file_log()
    return final


def _write_report(output_dir: Path, text_log: TextLogCallback) -> None:
    """The training report beside the eval reports; a failure to draw it is logged, the run stands."""
    from mixtune.train.report import write_training_report

    try:
        path = write_training_report(output_dir)
    except Exception as e:  # noqa: BLE001 - the model is saved; the report can be redrawn by `mixtune report`
        logger.warning("the training report could not be written (%s: %s); retry with `mixtune report %s`",
                       e.__class__.__name__, e, output_dir)
        return
    text_log.write(f"training report: {path}")


def run_header(recipe: Recipe, plan: Any, *, world: int, global_batch: int, max_steps: int) -> str:
    """The run's one-line header: mixture, tasks and encodings, world size, global batch, steps, output folder."""
    from mixtune.mixtures.report import tasks_text

    t = recipe.training
    tasks = [{"name": task.name, "source": task.source} for task in plan.tasks]
    return (f"run: mixture {plan.spec.name!r} (hash {plan.hash}): {tasks_text(tasks, plan.spec)}, {len(plan)} "
            f"examples; world size {world}, global batch {global_batch} ({t.per_device_batch_size} per device × "
            f"{t.gradient_accumulation_steps} accumulation × {world} process(es)), {max_steps} steps; "
            f"output {recipe.output_dir}")


def _start_wandb(recipe: Recipe, run_name: str | None) -> None:
    """Open this run's wandb run under output_dir/wandb (the Trainer's callback then logs to it).

    Opened here rather than by the callback because wandb reads WANDB_DIR only once per process: a
    second run in the same process would otherwise write into the first run's folder. The run name
    (`run_name`, from the training arguments) is already redacted.
    """
    import sys

    import wandb

    from mixtune.secrets import redact

    argv = sys.argv
    sys.argv = redact(list(argv))  # wandb records the command line (sys.argv) in its run metadata
    try:
        wandb.init(project=recipe.logging.project, name=run_name, dir=recipe.output_dir, mode=recipe.logging.wandb,
                   config={"recipe": redact(recipe_dict(recipe))}, reinit="finish_previous")
    finally:
        sys.argv = argv


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
                 deepspeed: bool) -> tuple[Path | None, ckpt.StreamState | None]:
    """(checkpoint or None, its stream state) for the recipe's `resume:`; checks the mixture, the step
    and that a DeepSpeed checkpoint fits this launch (`check_deepspeed_resume`).

    A checkpoint at exactly `max_steps` is resumed too: its run was stopped while `final/` was written
    (`finished_run` catches the runs whose `final/` is there), and the Trainer runs no step from it.
    """
    resume_from = ckpt.resolve_resume(recipe.resume, recipe.output_dir, recipe_path=recipe.source)
    if resume_from is None:
        return None, None
    state = ckpt.read_state(resume_from)
    if state.mixture_hash != mixture_hash:
        raise ConfigError(
            f"the mixture changed since {resume_from} was saved (hash {state.mixture_hash} -> {mixture_hash})",
            path=recipe.source, field="data.mixture",
            hint="restore the mixture, or start fresh with resume=never or another output_dir")
    if state.global_step > max_steps:
        raise ConfigError(f"{resume_from} is already at step {state.global_step}, past this run's {max_steps} steps",
                          path=recipe.source, field="training.max_steps",
                          hint=f"restore training.max_steps / epochs, or train its weights further in a new run "
                               f"with its own LR schedule: model.name_or_path={resume_from} resume=never "
                               "output_dir=<new folder>")
    check_deepspeed_resume(recipe, resume_from, state.world_size, world=world, deepspeed=deepspeed)
    return resume_from, state


def schedule_of(recipe: Recipe, max_steps: int) -> dict[str, Any]:
    """The settings that shape the learning-rate schedule (recorded in every checkpoint)."""
    t = recipe.training
    return {"max_steps": max_steps, "epochs": t.epochs if t.max_steps is None else None,
            "lr_scheduler": t.lr_scheduler, "learning_rate": t.learning_rate,
            "warmup_steps": t.warmup_steps, "warmup_ratio": t.warmup_ratio}


def schedule_change(state: ckpt.StreamState, schedule: dict[str, Any], checkpoint: Path | None) -> str | None:
    """A warning naming the old and new LR schedule when they differ, else None."""
    old = state.schedule
    if not old or old == schedule:
        return None

    def show(s: dict[str, Any]) -> str:
        return ", ".join(f"{k}={s.get(k)}" for k in schedule if s.get(k) is not None)

    diff = ", ".join(f"{k} {old.get(k)} -> {schedule[k]}" for k in schedule if old.get(k) != schedule[k])
    return (f"the learning-rate schedule changed since {checkpoint} was saved ({diff}). Saved schedule: "
            f"{show(old)}; this run: {show(schedule)}. Resuming continues at step {state.global_step} of the NEW "
            f"schedule, so the learning rate jumps to the new curve's value there. To keep the old schedule, "
            f"restore those settings; to train the weights further with a fresh schedule, start a new run: "
            f"model.name_or_path={checkpoint} resume=never output_dir=<new folder>")


def finished_run(recipe: Recipe, mixture_hash: str, max_steps: int) -> str | None:
    """With `resume: auto`: when output_dir already holds this run's `final/` (same mixture, at least
    `max_steps` steps), a message saying where its model and held-out report are; else None."""
    from mixtune.limits import json_loads

    if recipe.resume != "auto":
        return None
    output_dir = Path(recipe.output_dir)
    try:
        info = json_loads((output_dir / FINAL / RUN_FILE).read_text(encoding="utf-8"))
        steps, mixture = int(info["global_steps"]), info["mixture_hash"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if mixture != mixture_hash or steps < max_steps:
        return None
    text = f"{output_dir} already holds this finished run ({steps} steps): final model {output_dir / FINAL}"
    history = (info.get("heldout_eval") or {}).get("history") or []
    if history:
        report = output_dir / "heldout_eval" / f"step-{history[-1]['step']}" / "report.md"
        if report.is_file():
            text += f", held-out report {report}"
    return text + (". Nothing to do; to train again from scratch use resume=never (its checkpoints are "
                   "deleted and final/ is replaced) or another output_dir")


def _start_over(output_dir: Path) -> None:
    """`resume: never`: delete an earlier run's checkpoints (a later `resume: auto` must not pick them)."""
    old = ckpt.list_checkpoints(output_dir)
    for folder in old:
        ckpt.delete_checkpoint(folder)
    if old or (output_dir / FINAL).exists():
        logger.warning("resume=never: starting over in %s; deleted %d checkpoint(s) of the earlier run%s",
                       output_dir, len(old), f", its {FINAL}/ is replaced when this run ends"
                       if (output_dir / FINAL).exists() else "")


def _callbacks(recipe: Recipe, plan: Any, text_log: TextLogCallback, *, start_step: int, start_position: int,
               global_batch: int, world: int, stop_position: int, schedule: dict[str, Any]) -> list[Any]:
    from mixtune.train.nan_guard import NanGuardCallback
    from mixtune.train.task_losses import TaskLossCallback

    callbacks: list[Any] = [
        StaleCheckpointCallback(),
        CheckpointStateCallback(start_step=start_step, start_position=start_position, global_batch_size=global_batch,
                                world_size=world, mixture_hash=plan.hash, mixture_size=len(plan),
                                save_total_limit=recipe.training.save_total_limit, schedule=schedule),
        text_log,
        MixtureLogCallback(plan.hash, trained_task_counts(plan, stop_position)),
        NanGuardCallback(plan, policy=recipe.training.on_nan, start_step=start_step,
                         start_position=start_position, global_batch_size=global_batch),
        TaskLossCallback(plan, recipe.output_dir, start_step=start_step),
    ]
    if recipe.training.on_nan == "stop":
        callbacks.append(NanPolicyCallback())  # the logged loss too (DeepSpeed keeps gradients to itself)
    return callbacks


def _length_field(kind: str) -> str:
    """The recipe field that bounds a model input's length."""
    return "data.max_source_length" if kind == "seq2seq" else "data.max_length"


def _check_length(recipe: Recipe, limit: int | None, field: str) -> None:
    """Refuse a length setting beyond the model's `max_position_embeddings`."""
    value = getattr(recipe.data, field.split(".")[1])
    if limit is not None and value is not None and value > limit:
        raise ConfigError(f"{value} is longer than the model's max_position_embeddings ({limit})",
                          path=recipe.source, field=field, hint=f"set {field} to at most {limit}")


def trained_task_counts(plan: Any, stop_position: int) -> dict[str, int]:
    """How many examples of each task the stream positions [0, stop_position) hold."""
    import numpy as np

    size = len(plan)
    task_ids = plan.index.task_ids
    full, rest = divmod(stop_position, size)
    counts = np.bincount(task_ids, minlength=len(plan.tasks)) * full
    counts = counts + np.bincount(task_ids[:rest], minlength=len(plan.tasks))
    out: dict[str, int] = {}
    for t, c in zip(plan.tasks, counts.tolist(), strict=True):  # a task taken by several sources counts once
        if c:
            out[t.name] = out.get(t.name, 0) + int(c)
    return out


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
    from mixtune.io import atomic_write_json, safetensors_write_errors
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
            with safetensors_write_errors(tmp / "model.safetensors"):
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
    """Send mixtune's and transformers' log records to the run's text log (main process); transformers'
    own console handler gets the redacting filter too."""
    from mixtune.secrets import RedactingFilter, install_log_redaction

    _detach_file_log()
    install_log_redaction(_transformers_logger())
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
