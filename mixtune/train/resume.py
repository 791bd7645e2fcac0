"""Where a run resumes: the checkpoint `resume:` picks, checked against the mixture, the steps, the launch
and the learning-rate schedule; `resume: never` clears an earlier run's checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.recipe import Recipe
from mixtune.train import checkpoint as ckpt
from mixtune.train.final import FINAL

logger = logging.getLogger(__name__)


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


def start_over(output_dir: Path) -> None:
    """`resume: never`: delete an earlier run's checkpoints (a later `resume: auto` must not pick them)."""
    old = ckpt.list_checkpoints(output_dir)
    for folder in old:
        ckpt.delete_checkpoint(folder)
    if old or (output_dir / FINAL).exists():
        logger.warning("resume=never: starting over in %s; deleted %d checkpoint(s) of the earlier run%s",
                       output_dir, len(old), f", its {FINAL}/ is replaced when this run ends"
                       if (output_dir / FINAL).exists() else "")
