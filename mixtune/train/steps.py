"""How many optimizer steps a run takes (training and `recipe check` both ask; no heavy imports)."""

from __future__ import annotations

import math
from typing import Any


def total_steps(training: Any, plan_size: int, global_batch: int) -> int:
    """Optimizer steps of a run with these `training:` settings: `max_steps`, else `epochs` (default 1) passes
    over a plan of `plan_size` examples, `global_batch` examples per step."""
    if training.max_steps is not None:
        return training.max_steps
    epochs = training.epochs if training.epochs is not None else 1.0
    return max(1, math.ceil(epochs * plan_size / global_batch))
