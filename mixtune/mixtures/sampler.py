"""The sample index: position -> (task, instance row), a pure function of (mixture, seed, position).

Built once, vectorised with numpy, and kept as two int arrays, so starting at any position is a
slice (O(1)) with no replay of earlier positions:

- Task order (stratified): each task gets `round(rate × N)` positions (largest remainder, so the
  realised counts match the expected ones to within one), and the multiset of task ids is put in a
  seeded random order. Any prefix of the order is a uniform sample of the whole.
- Instances: a task's k-th occurrence takes the next instance of its pool in a seeded random order;
  the pool is drawn without replacement until exhausted, then reshuffled (pass p uses the p-th
  permutation of a stream seeded by (seed, task)).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixtune.mixtures.rates import apportion

_ORDER = 0x6F72646572  # stream tags, so the order, pools and instance streams are independent
_POOL = 0x706F6F6C
_STREAM = 0x73747265
_MASK64 = (1 << 64) - 1


def stable_key(text: str) -> int:
    """A 64-bit integer for a name, the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def position_seed(seed: int, position: int) -> int:
    """Seed of the per-example choices (reference, tk_instruct encoding) at `position` (SplitMix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def position_seeds(seed: int, positions: np.ndarray) -> np.ndarray:
    """`position_seed(seed, p)` for every p of `positions`, vectorised (uint64 arithmetic wraps mod 2**64)."""
    z = positions.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) & np.uint64(0x7FFFFFFF)).astype(np.int64)


def capped_pool(num_instances: int, cap: int | None, seed: int, task: str) -> np.ndarray:
    """Rows of a task's pool: all rows, or a seeded random subset of `cap` rows (sorted)."""
    if cap is None or num_instances <= cap:
        return np.arange(num_instances, dtype=np.int64)
    rng = np.random.default_rng([seed & _MASK64, _POOL, stable_key(task)])
    return np.sort(rng.choice(num_instances, size=cap, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class SampleIndex:
    """For each position, the task (index into the plan's tasks) and the instance row."""

    task_ids: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.task_ids)

    def counts(self, num_tasks: int) -> np.ndarray:
        """Realised number of examples per task."""
        return np.bincount(self.task_ids, minlength=num_tasks)


def build_index(rates: np.ndarray, pools: Sequence[np.ndarray], total: int, seed: int,
                task_keys: Sequence[int]) -> SampleIndex:
    """Sample `total` positions from tasks with `rates`, each drawing from its pool (see module doc)."""
    counts = apportion(rates, total)
    task_dtype = np.int32 if len(pools) < 2**31 else np.int64
    order_rng = np.random.default_rng([seed & _MASK64, _ORDER])
    task_ids = order_rng.permutation(np.repeat(np.arange(len(pools), dtype=task_dtype), counts))
    rows = np.empty(total, dtype=np.int64)
    by_task = np.argsort(task_ids, kind="stable")  # positions of task 0 in order, then task 1, ...
    start = 0
    for k, count in enumerate(counts.tolist()):
        if count == 0:
            continue
        pool = pools[k]
        size = len(pool)
        passes = -(-count // size)
        rng = np.random.default_rng([seed & _MASK64, _STREAM, int(task_keys[k])])
        perms = np.argsort(rng.random((passes, size)), axis=1).reshape(-1)[:count]
        rows[by_task[start:start + count]] = pool[perms]
        start += count
    return SampleIndex(task_ids=task_ids, rows=rows)
