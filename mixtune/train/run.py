"""One training run from a recipe, in torchtune's recipe shape: `setup` (plan, launch, resume decision),
`announce`, `build` (model and trainer), train, `save` (final model and report), cleanup (in `finally`).

Features and the recipe keys that control them:

- model (`model:`): hub/local model or a config-built tiny one, dtype, LoRA, gradient checkpointing;
- data (`data:`): the mixture plan streamed by position (`mixtune.train.data`); loss on the
  completion only; packing (`data.packing`); the mixture's held-out guard refuses held-out tasks;
- optimisation (`training:`): AdamW, schedule, warmup, `max_steps` or `epochs`, batch sizes;
- DeepSpeed ZeRO (`distributed.deepspeed`): a preset or a JSON file;
- checkpoints every `training.save_steps`, completed by a marker; `resume:` auto/never/path
  continues from the saved stream position in O(1), also with another number of processes;
- logging (`logging:`): wandb (offline by default; `mixtune.train.wandb_run`), `output_dir/train.log`
  (`mixtune.train.run_log`), progress bar; the training
  loss per task, category and source at every logging step in `output_dir/losses.jsonl`;
- outputs: `output_dir/checkpoint-N/`, `output_dir/final/` (plain HF format + `mixtune_run.json`;
  `mixtune.train.final`), `output_dir/training_report.md` (`mixtune.train.report`); where a run resumes:
  `mixtune.train.resume`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
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
from mixtune.train.final import FINAL, finished_run, save_final
from mixtune.train.output_dir import check_output_dir, hold
from mixtune.train.resume import resume_point, schedule_change, schedule_of, start_over
from mixtune.train.run_log import note, run_log
from mixtune.train.steps import total_steps
from mixtune.train.wandb_run import wandb_run

logger = logging.getLogger(__name__)


def plan_for(recipe: Recipe) -> Any:
    """The recipe's mixture plan (raises HeldOutError when it would train on held-out tasks)."""
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    return plan_mixture(load_mixture(recipe.data.mixture, collection=recipe.data.collection))


@dataclass
class RunSetup:
    """What `setup` decided before the model loads: the plan, the launch, the steps and where to resume."""

    plan: Any
    args: Any  # the transformers training arguments
    kind: str  # the model kind the arguments were built for (`model_kind` of the recipe, else causal)
    world: int
    global_batch: int
    max_steps: int
    resume_from: Path | None
    state: ckpt.StreamState | None
    schedule: dict[str, Any]
    show: bool  # progress phases on the console
    online: Any = None  # the online re-weighting (`mixtune.train.online_mixing`); None for a static mixture

    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0

    @property
    def start_step(self) -> int:
        return self.state.global_step if self.state else 0

    @property
    def start_position(self) -> int:
        return self.state.position if self.state else 0

    @property
    def end_position(self) -> int:
        return self.start_position + (self.max_steps - self.start_step) * self.global_batch


def run_training(recipe: Recipe, *, order_log: str | Path | None = None) -> Path:
    """Train as the recipe says; returns the final model folder. Works under any launcher.

    setup (plan, launch, resume decision) -> announce (train.log, wandb) -> train -> save -> cleanup (the run
    log and the wandb run are closed whatever happens). The main process holds `output_dir`'s lock for the
    whole run (a second run on it is refused).
    """
    output_dir = check_output_dir(recipe.output_dir, recipe_path=recipe.source)
    main = int(os.environ.get("RANK", "0")) == 0
    with hold(output_dir, recipe_path=recipe.source) if main else contextlib.nullcontext():
        run = setup(recipe, output_dir)
        if run is None:  # `resume: auto` found this run finished
            return output_dir / FINAL
        cleanup = contextlib.ExitStack()
        try:
            cleanup.enter_context(run_log(output_dir / recipe.logging.log_file, enabled=run.is_main))
            if run.is_main:
                announce(recipe, run)
            cleanup.enter_context(wandb_run(recipe, run.args.run_name,
                                            enabled=run.is_main and "wandb" in run.args.report_to))
            trainer, tokenizer, heldout = build(recipe, run, order_log)
            result = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
            return save(recipe, run, output_dir, trainer, tokenizer, heldout, result)
        finally:
            cleanup.close()


def setup(recipe: Recipe, output_dir: Path) -> RunSetup | None:
    """Plan the mixture, learn the launch's world size, size the run and decide where it resumes; prepare
    output_dir (main process). None when `resume: auto` finds this run already finished."""
    from mixtune.console import phase
    from mixtune.distributed import launch_world_size
    from mixtune.models.kind import model_kind
    from mixtune.train.launch import check_cpu_deepspeed_launch
    from mixtune.train.trainer import _has_accelerator, build_training_arguments

    show = recipe.logging.progress_bar and int(os.environ.get("RANK", "0")) == 0
    with phase(f"planning mixture {recipe.data.mixture}", enabled=show):
        plan = plan_for(recipe)
    if len(plan) == 0:
        raise ConfigError("the mixture has no examples", path=recipe.source, field="data.mixture")
    from mixtune.train.online_mixing import online_mixing

    online = online_mixing(recipe, plan)  # None for a static mixture; refuses DataLoader workers
    check_cpu_deepspeed_launch(recipe, has_accelerator=_has_accelerator())
    kind = model_kind(recipe.model) or "causal"
    world = launch_world_size()
    g_batch = global_batch_size(recipe.training.per_device_batch_size,
                                recipe.training.gradient_accumulation_steps, world)
    max_steps = total_steps(recipe.training, len(plan), g_batch)
    args = build_training_arguments(recipe, max_steps=max_steps, kind=kind)
    if args.world_size != world:  # the launcher's environment and the process group must agree
        raise RuntimeError(f"the launch environment says {world} process(es), the process group "
                           f"{args.world_size}")
    if args.deepspeed and world > 1:
        _init_deepspeed_comm()

    finished = finished_run(recipe, plan.hash, max_steps)
    if finished is not None:
        if args.process_index == 0:
            logger.warning("%s", finished)
        return None
    resume_from, state = resume_point(recipe, plan.hash, max_steps, world=world, deepspeed=_uses_deepspeed(args))
    run = RunSetup(plan=plan, args=args, kind=kind, world=world, global_batch=g_batch, max_steps=max_steps,
                   resume_from=resume_from, state=state, schedule=schedule_of(recipe, max_steps), show=show,
                   online=online)
    if run.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if recipe.resume == "never":
            start_over(output_dir)
        else:
            ckpt.remove_incomplete(output_dir)
    return run


def announce(recipe: Recipe, run: RunSetup) -> None:
    """The run header (train.log and the console), the resume decision, schedule warnings (main process)."""
    from mixtune.secrets import redact_text

    header = run_header(recipe, run.plan, world=run.world, global_batch=run.global_batch,
                        max_steps=run.max_steps)
    note(header)
    print(redact_text(header), file=sys.stderr, flush=True)  # on the console too, whatever the logging set-up
    note(("resuming from " + str(run.resume_from) + f" at step {run.start_step}, stream position "
          f"{run.start_position}") if run.resume_from else "starting fresh")
    changed = schedule_change(run.state, run.schedule, run.resume_from) if run.state else None
    if changed:
        logger.warning("%s", changed)  # the console and train.log
    if run.resume_from and run.start_step == run.max_steps:
        logger.warning("%s is at the last step (%d) but %s/ is missing (its save was interrupted): "
                       "writing %s/ from it", run.resume_from, run.max_steps, FINAL, FINAL)


def build(recipe: Recipe, run: RunSetup, order_log: str | Path | None) -> tuple[Any, Any, Any]:
    """Load the model and build the trainer over the position stream: (trainer, tokenizer, held-out eval
    callback or None)."""
    from transformers import set_seed

    from mixtune.console import phase
    from mixtune.models.load import context_length, load_model_and_tokenizer
    from mixtune.train.trainer import build_collator, build_trainer, build_training_arguments

    set_seed(recipe.training.seed)
    with phase("loading the model", enabled=run.show and run.is_main):
        model, tokenizer, kind = load_model_and_tokenizer(recipe.model)
    if kind != run.kind:
        run.args = build_training_arguments(recipe, max_steps=run.max_steps, kind=kind)
        run.kind = kind
    collate = build_collator(recipe, model, tokenizer, kind)
    limit, length_field = context_length(model.config), _length_field(kind)
    _check_length(recipe, limit, length_field)
    stream = PositionStream(run.start_position, run.end_position,
                            micro_batch=recipe.training.per_device_batch_size * run.world)
    online = run.online
    if online is not None:
        online.start(global_batch=run.global_batch, state=run.state.mixing if run.state else None,
                     recipe_path=recipe.source)
    # prompts come whole from the plan; the collator fits them to the budgets in token space
    collator = StreamCollator(online.view(stream.stop) if online else run.plan, collate, order_log=order_log,
                              rank=run.args.process_index, max_positions=limit, length_field=length_field,
                              task_ids=True)
    callbacks = _callbacks(recipe, run.plan, start_step=run.start_step, start_position=run.start_position,
                           global_batch=run.global_batch, world=run.world, stop_position=stream.stop,
                           schedule=run.schedule)
    if online is not None:
        online.attach(callbacks, recipe.output_dir, start_step=run.start_step, stop=stream.stop)
    heldout = None
    if recipe.eval is not None:
        from mixtune.eval.callback import HeldOutEvalCallback

        heldout = HeldOutEvalCallback(recipe.eval, tokenizer, progress=recipe.logging.progress_bar)
        callbacks.append(heldout)
    trainer = build_trainer(model=model, tokenizer=tokenizer, kind=kind, args=run.args, train_dataset=stream,
                            data_collator=collator, callbacks=callbacks, resume_from=run.resume_from)
    if heldout is not None:
        heldout.bind(trainer)
    return trainer, tokenizer, heldout


def save(recipe: Recipe, run: RunSetup, output_dir: Path, trainer: Any, tokenizer: Any, heldout: Any,
         result: Any) -> Path:
    """Write `final/` with its `mixtune_run.json` (every process takes part) and the training report."""
    from mixtune.console import phase

    info = {
        "recipe": recipe_dict(recipe),
        "recipe_file": recipe.source,
        "mixture": run.plan.summary(),
        "mixture_hash": run.plan.hash,
        "trained_examples": run.end_position,
        "trained_task_counts": (run.online.trained_task_counts(run.end_position) if run.online
                                else trained_task_counts(run.plan, run.end_position)),
        "global_steps": run.max_steps,
        "world_size": run.world,
        "zero_stage": zero_stage(run.args.deepspeed) if isinstance(run.args.deepspeed, dict) else None,
        "global_batch_size": run.global_batch,
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "git_commit": git_commit(),
        "metrics": result.metrics,
        "kind": run.kind,
    }
    if heldout is not None:
        info["heldout_eval"] = {"best": heldout.best, "history": heldout.history}
    with phase(f"saving the final model to {output_dir / FINAL}", enabled=run.show and run.is_main):
        final = save_final(trainer, tokenizer, output_dir, info)
    if run.is_main:
        note(f"final model saved to {final}; trained on {run.end_position} examples")
        _write_report(output_dir)
    return final


def _write_report(output_dir: Path) -> None:
    """The training report beside the eval reports; a failure to draw it is logged, the run stands."""
    from mixtune.train.report import write_training_report

    try:
        path = write_training_report(output_dir)
    except Exception as e:  # noqa: BLE001 - the model is saved; the report can be redrawn by `mixtune report`
        logger.warning("the training report could not be written (%s: %s); retry with `mixtune report %s`",
                       e.__class__.__name__, e, output_dir)
        return
    note(f"training report: {path}")


def run_header(recipe: Recipe, plan: Any, *, world: int, global_batch: int, max_steps: int) -> str:
    """The run's one-line header: mixture, tasks and encodings, world size, global batch, steps, output folder."""
    from mixtune.mixtures.report import tasks_text

    t = recipe.training
    tasks = [{"name": task.name, "source": task.source} for task in plan.tasks]
    return (f"run: mixture {plan.spec.name!r} (hash {plan.hash}): {tasks_text(tasks, plan.spec)}, {len(plan)} "
            f"examples; world size {world}, global batch {global_batch} ({t.per_device_batch_size} per device × "
            f"{t.gradient_accumulation_steps} accumulation × {world} process(es)), {max_steps} steps; "
            f"output {recipe.output_dir}")


def _uses_deepspeed(args: Any) -> bool:
    """DeepSpeed from the recipe (`distributed.deepspeed`) or from `accelerate launch --use_deepspeed`."""
    return bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def _callbacks(recipe: Recipe, plan: Any, *, start_step: int, start_position: int, global_batch: int,
               world: int, stop_position: int, schedule: dict[str, Any]) -> list[Any]:
    from mixtune.train.nan_guard import NanGuardCallback
    from mixtune.train.task_losses import TaskLossCallback

    callbacks: list[Any] = [
        StaleCheckpointCallback(),
        CheckpointStateCallback(start_step=start_step, start_position=start_position, global_batch_size=global_batch,
                                world_size=world, mixture_hash=plan.hash, mixture_size=len(plan),
                                save_total_limit=recipe.training.save_total_limit, schedule=schedule),
        TextLogCallback(),
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
