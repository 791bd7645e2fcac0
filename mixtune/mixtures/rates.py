"""Sampling rates: examples-proportional with a cap and a temperature, explicit weights, nesting.

The rate of a task inside one mixture file is proportional to `min(n, cap) ** (1 / temperature)`
times its explicit weight and its source's weight (as seqio's `mixing_rate_num_examples` and
Tk-Instruct's `max_num_instances_per_task`). A file's own sources form one component and every
nested mixture another; a component's share is its weight over the summed weights, and the rates
inside a nested mixture are multiplied by its share, all the way down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def capped_size(num_instances: int, cap: int | None) -> int:
    """The size of a task's pool: `min(n, cap)` (no cap: n)."""
    return int(num_instances if cap is None else min(num_instances, cap))


def mixing_rates(
    num_instances: Sequence[int] | np.ndarray,
    *,
    cap: int | None = None,
    temperature: float = 1.0,
    weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Normalised rates ∝ min(n, cap)^(1/temperature) × weight (sum to 1).

    temperature 1 is examples-proportional; a large temperature tends to uniform.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    sizes = np.asarray(num_instances, dtype=np.float64)
    if cap is not None:
        sizes = np.minimum(sizes, float(cap))
    w = np.ones_like(sizes) if weights is None else np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        scores = sizes ** (1.0 / temperature) * w
        total = scores.sum()
    if not np.isfinite(total):  # overflow (tiny temperature, huge weights): normalise in log space instead
        with np.errstate(divide="ignore"):
            logs = np.log(sizes) / temperature + np.log(w)
        scores = np.exp(logs - logs.max()) if np.isfinite(logs.max()) else np.zeros_like(sizes)
        total = scores.sum()
    if not total > 0:
        raise ValueError("every task has size or weight 0: nothing to sample")
    return scores / total


def nest(components: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
    """Concatenate components' normalised rates, each scaled by weight / Σ weights (sums to 1)."""
    weights = np.array([w for w, _ in components], dtype=np.float64)
    shares = weights / weights.sum()
    return np.concatenate([share * np.asarray(r, dtype=np.float64)
                           for share, (_, r) in zip(shares, components, strict=True)])


def apportion(rates: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, as close to `rates × total` as possible (largest remainder).

    Ties are broken by task order, so the result is deterministic.
    """
    exact = np.asarray(rates, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    if short > 0:
        remainder = exact - counts
        order = np.argsort(-remainder, kind="stable")
        counts[order[:short]] += 1
    return counts
