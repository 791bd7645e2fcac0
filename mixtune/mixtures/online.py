"""Online re-weighting (`mixing: {strategy: online}`): ODM's EXP3 bandit and the segmented stream it samples.

The method is ODM, Albalak, Pan, Raffel & Wang (2023), "Efficient Online Data Mixing For Language Model
Pre-Training" (arXiv:2312.02406), Algorithm 1: the K groups (tasks, categories or sources) are the arms
of an EXP3 bandit; the reward of a group is its training loss; with exploration rate
ε_t = min(1/K, sqrt(ln K / (K t))) the sampling distribution is

    π(i) = (1 − K ε_t) · exp(ε_{t−1} R̂_i) / Σ_j exp(ε_{t−1} R̂_j) + ε_t

and the sampled group's estimated reward is smoothed and importance-weighted,
R̂_i ← α R̂_i + (1 − α) · loss_i / π(i) (α = 0.9). mixtune's reading of it, for mixed batches:

- every example is one draw of a group from π (ODM draws a whole batch from one group), so t counts
  examples and a group drawn m times in a segment gets m smoothing steps with the segment's mean
  (token-weighted) loss of that group: R̂_i ← α^m R̂_i + (1 − α^m) loss_i / π(i); undrawn groups keep R̂_i;
- the exponential weights start from the static mixture's group rates p0 (EXP3 with initial weights
  p0 instead of 1: with a uniform static mixture this is the paper's formula), and the first two
  segments sample with p0 itself;
- `floor` bounds every probability from below: the exploration term is max(ε_t, floor).

The stream is cut into segments of S = every_steps × global batch positions; segment k samples with
weights w_k. The group at position p is drawn from w_k by a uniform keyed by (seed, p), the task
within the group from the static rates by a second uniform keyed by (seed, p), and the instance is the
task's next one in the sampler's seeded pool permutations (mixtune.mixtures.sampler: the c-th
occurrence of a task takes element c mod P of pass c div P). So the example at a position is a pure
function of (mixture, seed, position, weight history). Weights w_0 = w_1 = p0 (with the floor);
w_{k+2} = update(w_{k+1}, losses of segment k): one segment of delay, so the positions of a segment
never need weights that are not known yet, however far (up to a segment) the data loader reads ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixtune.mixtures.sampler import _MASK64, _STREAM, position_seeds, stable_key

_GROUP = 0x67726F7570  # stream tags of the per-position uniforms
_TASK = 0x7461736B
_UNIT = float(2**31)
PAPER = "ODM: Albalak et al. 2023, Efficient Online Data Mixing For Language Model Pre-Training (arXiv:2312.02406)"


#: the plan-task field that names a task's group, per `group_by`
GROUP_FIELDS = {"task": "name", "category": "category", "source": "source"}


def task_groups(tasks: list[Any], group_by: str) -> tuple[list[str], np.ndarray]:
    """(group names in first-seen order, the group index of every plan task) for `group_by`; `tasks` are plan
    tasks or their `summary()` dicts."""
    field = GROUP_FIELDS[group_by]
    keys = [t[field] if isinstance(t, dict) else getattr(t, field) for t in tasks]
    names = list(dict.fromkeys(keys))
    where = {n: i for i, n in enumerate(names)}
    return names, np.array([where[k] for k in keys], dtype=np.int64)


def within_group_shares(rates: np.ndarray, members: list[np.ndarray]) -> list[np.ndarray]:
    """Per group (its task indices in `members`), each task's share of the group's probability: its static
    rate over the group's (uniform when the group's rates are all 0)."""
    shares = []
    for m in members:
        r = rates[m]
        shares.append(r / r.sum() if r.sum() > 0 else np.full(len(m), 1.0 / len(m)))
    return shares


def default_floor(num_groups: int) -> float:
    """The floor when the mixture gives none: a tenth of the uniform probability."""
    return 0.1 / num_groups


def exploration(num_groups: int, pulls: int) -> float:
    """ODM's exploration rate ε_t = min(1/K, sqrt(ln K / (K t))) after t = `pulls` draws (1/K at t = 0)."""
    k = num_groups
    if pulls <= 0 or k < 2:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * pulls)))


@dataclass
class Exp3:
    """ODM's bandit state: the smoothed importance-weighted rewards R̂ and the number of draws t so far."""

    prior: np.ndarray                 # p0: the static mixture's group rates (sum 1)
    floor: float
    smoothing: float = 0.9
    rewards: np.ndarray = field(default=None)  # type: ignore[assignment]
    pulls: int = 0

    def __post_init__(self) -> None:
        if self.rewards is None:
            self.rewards = np.zeros(len(self.prior), dtype=np.float64)

    def initial(self) -> np.ndarray:
        """The weights before any reward: the static rates, lifted to the floor."""
        return _with_floor(self.prior, self.floor)

    def update(self, probabilities: np.ndarray, losses: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """One update from a segment sampled with `probabilities`, in which group i was drawn draws[i]
        times with mean loss losses[i] (ignored where draws[i] == 0); returns the new weights.

        The segment's draws are the paper's turns t−m+1 .. t: after them the distribution is
        (1 − K ε_t) · softmax(log p0 + ε_{t−1} R̂) + ε_t, with the floor as the least exploration."""
        k = len(self.prior)
        seen = draws > 0
        keep = self.smoothing ** draws[seen]
        self.rewards[seen] = keep * self.rewards[seen] + (1 - keep) * losses[seen] / probabilities[seen]
        self.pulls += int(draws.sum())
        logits = np.log(self.prior) + exploration(k, self.pulls - 1) * self.rewards
        q = np.exp(logits - logits.max())
        q /= q.sum()
        return _with_floor(q, max(exploration(k, self.pulls), self.floor))

    def state(self) -> dict[str, Any]:
        """Plain data for the checkpoint (floats round-trip exactly through JSON)."""
        return {"rewards": self.rewards.tolist(), "pulls": self.pulls}

    def restore(self, data: dict[str, Any]) -> None:
        self.rewards = np.array(data["rewards"], dtype=np.float64)
        self.pulls = int(data["pulls"])


def _with_floor(q: np.ndarray, floor: float) -> np.ndarray:
    """(1 − K·floor) q + floor: every entry at least `floor`, the sum still 1."""
    return (1 - len(q) * floor) * q + floor


class OnlineIndex:
    """The position -> (task, row) index of an online mixture, materialised segment by segment.

    `extend(weights)` appends the next segment sampled with `weights` (over groups). Only the task
    order and rows are kept (12 bytes per position, as the static index).
    """

    def __init__(self, plan: Any, groups: np.ndarray, num_groups: int, segment: int) -> None:
        self.plan = plan
        self.seed = plan.seed
        self.segment = segment
        self.groups = groups
        rates = np.array([t.rate for t in plan.tasks], dtype=np.float64)
        self.members = [np.flatnonzero(groups == g) for g in range(num_groups)]
        # per group: the cumulative shares of its tasks (the within-group choice)
        self.within = [np.cumsum(r) for r in within_group_shares(rates, self.members)]
        self.task_ids = np.empty(0, dtype=np.int64)
        self.rows = np.empty(0, dtype=np.int64)
        self.occurrences = np.zeros(len(plan.tasks), dtype=np.int64)
        self._perms: dict[int, tuple[np.random.Generator, list[np.ndarray]]] = {}
        self.segments = 0

    def extend(self, weights: np.ndarray) -> None:
        """Sample the next segment's positions with group `weights` (see the module doc)."""
        lo = self.segments * self.segment
        positions = np.arange(lo, lo + self.segment, dtype=np.int64)
        u = position_seeds(self.seed ^ _GROUP, positions) / _UNIT
        cdf = np.cumsum(weights)
        group = np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(weights) - 1)
        v = position_seeds(self.seed ^ _TASK, positions) / _UNIT
        task = np.empty(self.segment, dtype=np.int64)
        for g in np.unique(group).tolist():
            at = group == g
            pick = np.minimum(np.searchsorted(self.within[g], v[at], side="right"), len(self.members[g]) - 1)
            task[at] = self.members[g][pick]
        rows = np.empty(self.segment, dtype=np.int64)
        for t in np.unique(task).tolist():
            at = np.flatnonzero(task == t)
            rows[at] = self._rows(t, self.occurrences[t], len(at))
            self.occurrences[t] += len(at)
        self.task_ids = np.concatenate([self.task_ids, task])
        self.rows = np.concatenate([self.rows, rows])
        self.segments += 1

    def _rows(self, t: int, first: int, count: int) -> np.ndarray:
        """Rows of occurrences first .. first+count-1 of task t: the static sampler's pool permutations."""
        task = self.plan.tasks[t]
        size = len(task.pool)
        if t not in self._perms:
            key = stable_key(f"{task.source}\0{task.name}")
            self._perms[t] = (np.random.default_rng([self.seed & _MASK64, _STREAM, key]), [])
        rng, perms = self._perms[t]
        while len(perms) * size < first + count:
            perms.append(np.argsort(rng.random((1, size)), axis=1).reshape(-1))
        flat = np.concatenate(perms)[first:first + count]
        return task.pool[flat]

    def group_draws(self, k: int, num_groups: int) -> np.ndarray:
        """How many positions of segment k drew each group."""
        ids = self.task_ids[k * self.segment:(k + 1) * self.segment]
        return np.bincount(self.groups[ids], minlength=num_groups)


def mixing_summary(plan: Any) -> dict[str, Any]:
    """The `mixing` block of `mixture show --json` for an online mixture: method, groups, initial rates."""
    spec = plan.spec.mixing
    names, groups = task_groups(plan.tasks, spec.group_by)
    rates = np.bincount(groups, weights=[t.rate for t in plan.tasks], minlength=len(names))
    tasks = np.bincount(groups, minlength=len(names))
    floor = spec.floor if spec.floor is not None else default_floor(len(names))
    return {"strategy": "online", "method": spec.method, "paper": PAPER, "group_by": spec.group_by,
            "num_groups": len(names), "every_steps": spec.every_steps, "floor": floor, "smoothing": spec.smoothing,
            "groups": sorted(({"name": n, "num_tasks": int(c), "initial_rate": float(r)}
                              for n, c, r in zip(names, tasks.tolist(), rates.tolist(), strict=True)),
                             key=lambda g: (-g["initial_rate"], g["name"]))}
