"""The run's wandb run, opened and finished around training (main process, `logging.wandb` not disabled)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def wandb_run(recipe: Any, run_name: str | None, *, enabled: bool) -> Iterator[None]:
    """Open this run's wandb run under output_dir/wandb (the Trainer's callback then logs to it); finish it
    (an offline run is flushed to disk) on the way out, also when training fails.

    Opened here rather than by the Trainer's callback because wandb reads WANDB_DIR only once per process: a
    second run in the same process would otherwise write into the first run's folder. `run_name` (from the
    training arguments) is already redacted.
    """
    if enabled:
        _start(recipe, run_name)
    try:
        yield
    finally:
        _finish()


def _start(recipe: Any, run_name: str | None) -> None:
    import wandb

    from mixtune.recipe import recipe_dict
    from mixtune.secrets import redact

    argv = sys.argv
    sys.argv = redact(list(argv))  # wandb records the command line (sys.argv) in its run metadata
    try:
        wandb.init(project=recipe.logging.project, name=run_name, dir=recipe.output_dir, mode=recipe.logging.wandb,
                   config={"recipe": redact(recipe_dict(recipe))}, reinit="finish_previous")
    finally:
        sys.argv = argv


def _finish() -> None:
    """Close the wandb run when one is open."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
