"""Online re-weighting during training: the weight history, the stream the collator reads, the updates.

`online_mixing(recipe, plan)` is None for a static mixture. For `mixing: {strategy: online}` it returns an
`OnlineMixing` that the run wires in (mixtune.train.run):

- `view(stop)`: the plan the collator reads examples from. Its positions come from
  `mixtune.mixtures.online.OnlineIndex`, materialised segment by segment from the weight history; a
  segment whose weights are not known yet is an error, never a guess. The weights of segment k + 2 are
  computed when segment k ends (one segment of delay), and the DataLoader runs in the main process
  (`data.num_workers: 0`, enforced), reading at most one micro-batch ahead: no position is materialised
  before its weights exist.
- `attach(callbacks)`: the per-task losses (`TaskLossCallback`, the training forward's own logits) are
  also summed per optimizer step, all-reduced over processes, and added to the current segment; at the
  end of each segment ODM's update (`Exp3.update`) appends the next weights to the history, identically on
  every process, and the main process appends them to `mixing_weights.jsonl` (and to wandb when on).
- `state()` goes into every checkpoint's `mixtune_state.json` (beside the stream position): the weight
  history, the bandit state and the current segment's partial loss sums, so a resumed run continues
  with the same weights, bit for bit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from mixtune.errors import ConfigError
from mixtune.mixtures.online import Exp3, OnlineIndex, default_floor, task_groups

WEIGHTS_FILE = "mixing_weights.jsonl"


def online_mixing(recipe: Any, plan: Any) -> OnlineMixing | None:
    """The run's online mixing, or None for a static mixture. Refuses DataLoader workers (see the module doc)."""
    mixing = plan.spec.mixing
    if mixing.strategy != "online":
        return None
    if recipe.data.num_workers:
        raise ConfigError(f"online re-weighting needs the data in the main process, got data.num_workers="
                          f"{recipe.data.num_workers}", path=recipe.source, field="data.num_workers",
                          hint="set data.num_workers=0 (a segment's examples depend on weights computed during "
                               "training), or use a static mixture")
    recipe.data.num_workers = 0
    return OnlineMixing(plan, source=plan.spec.path)


class OnlineMixing:
    """One run's online mixture (module doc)."""

    def __init__(self, plan: Any, *, source: Any = None) -> None:
        spec = plan.spec.mixing
        self.plan = plan
        self.spec = spec
        self.names, self.groups = task_groups(plan.tasks, spec.group_by)
        k = len(self.names)
        self.floor = spec.floor if spec.floor is not None else default_floor(k)
        if k * self.floor > 1:
            raise ConfigError(f"floor {self.floor:g} × {k} groups is more than 1", path=source, field="mixing.floor",
                              hint=f"set mixing.floor to at most {1 / k:.6g} (1 / groups)")
        prior = np.bincount(self.groups, weights=plan.rates, minlength=k)
        self.bandit = Exp3(prior / prior.sum(), self.floor, spec.smoothing)
        self.every_steps = spec.every_steps
        self.segment = 0
        self.index: OnlineIndex | None = None
        self.history: list[np.ndarray] = []
        self.sums = np.zeros(len(plan.tasks))
        self.tokens = np.zeros(len(plan.tasks))

    def start(self, *, global_batch: int, state: dict[str, Any] | None, recipe_path: Any = None) -> None:
        """Begin (state None) or continue from a checkpoint's `mixing` state."""
        self.segment = self.every_steps * global_batch
        self.index = OnlineIndex(self.plan, self.groups, len(self.names), self.segment)
        if state is None:
            self.history = [self.bandit.initial(), self.bandit.initial()]
            return
        if state.get("segment") != self.segment or state.get("groups") != self.names:
            raise ConfigError(
                f"the checkpoint's online mixture has segments of {state.get('segment')} positions; this run "
                f"{self.segment} (every_steps × global batch)", path=recipe_path, field="training",
                hint="resume with the global batch (per-device batch × accumulation × processes) it was saved with")
        self.history = [np.array(w, dtype=np.float64) for w in state["history"]]
        self.bandit.restore(state["bandit"])
        self.sums = np.array(state["sums"], dtype=np.float64)
        self.tokens = np.array(state["tokens"], dtype=np.float64)

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue with the same weights (JSON; floats exact)."""
        return {"method": self.spec.method, "group_by": self.spec.group_by, "groups": self.names,
                "segment": self.segment, "every_steps": self.every_steps, "floor": self.floor,
                "history": [w.tolist() for w in self.history], "bandit": self.bandit.state(),
                "sums": self.sums.tolist(), "tokens": self.tokens.tolist()}

    def ensure(self, stop: int) -> None:
        """Materialise the segments up to position `stop` from the weight history."""
        assert self.index is not None
        while self.index.segments * self.segment < stop:
            k = self.index.segments
            if k >= len(self.history):
                raise RuntimeError(f"positions of segment {k} were requested before its weights are known "
                                   f"({len(self.history)} in the history): the data loader reads too far ahead")
            self.index.extend(self.history[k])

    def view(self, stop: int) -> OnlinePlan:
        """The plan the collator and the NaN guard read (positions 0 .. stop-1)."""
        return OnlinePlan(self, stop)

    def add_step(self, sums: np.ndarray, tokens: np.ndarray) -> None:
        """Add one optimizer step's per-task loss sums and label tokens (already summed over processes)."""
        self.sums += sums
        self.tokens += tokens

    def end_segment(self, k: int) -> np.ndarray:
        """Segment k ended: ODM's update from its losses gives the weights of segment k + 2."""
        assert self.index is not None and len(self.history) == k + 2, (k, len(self.history))
        self.ensure((k + 1) * self.segment)
        k_groups = len(self.names)
        draws = self.index.group_draws(k, k_groups)
        sums = np.bincount(self.groups, weights=self.sums, minlength=k_groups)
        tokens = np.bincount(self.groups, weights=self.tokens, minlength=k_groups)
        draws[tokens == 0] = 0  # drawn, but no label token was trained on (nothing observed)
        losses = np.divide(sums, tokens, out=np.zeros_like(sums), where=tokens > 0)
        weights = self.bandit.update(self.history[k], losses, draws)
        self.history.append(weights)
        self.sums[:] = 0
        self.tokens[:] = 0
        return weights

    def line(self, step: int, segment: int) -> dict[str, Any]:
        """One `mixing_weights.jsonl` record: the weights of `segment`, decided at `step`."""
        weights = self.history[segment]
        return {"step": step, "segment": segment, "first_step": segment * self.every_steps + 1,
                "weights": dict(zip(self.names, weights.tolist(), strict=True))}

    def trained_task_counts(self, stop: int) -> dict[str, int]:
        """Examples per task name among positions [0, stop) (what the run trained on)."""
        self.ensure(min(stop, len(self.history) * self.segment))
        assert self.index is not None
        counts = np.bincount(self.index.task_ids[:stop], minlength=len(self.plan.tasks))
        out: dict[str, int] = {}
        for t, c in zip(self.plan.tasks, counts.tolist(), strict=True):
            if c:
                out[t.name] = out.get(t.name, 0) + int(c)
        return out

    def attach(self, callbacks: list[Any], output_dir: str | Path, *, start_step: int, stop: int) -> None:
        """Wire the run's callbacks: per-step losses, the checkpoint state, the NaN guard's view; add the updates."""
        from mixtune.train.callbacks import CheckpointStateCallback
        from mixtune.train.nan_guard import NanGuardCallback
        from mixtune.train.task_losses import TaskLossCallback

        losses = next(c for c in callbacks if isinstance(c, TaskLossCallback))
        losses.per_step = True
        for c in callbacks:
            if isinstance(c, CheckpointStateCallback):
                c.mixing_state = self.state
            if isinstance(c, NanGuardCallback):
                c.plan = self.view(stop)
        callbacks.append(OnlineMixingCallback(self, losses, output_dir, start_step=start_step))


class OnlinePlan:
    """The mixture plan as the collator sees it in an online run: positions from the online index."""

    def __init__(self, online: OnlineMixing, stop: int) -> None:
        self.online = online
        self.tasks = online.plan.tasks
        self.spec = online.plan.spec
        self.seed = online.plan.seed
        self.hash = online.plan.hash
        self._stop = stop

    def __len__(self) -> int:
        return self._stop

    @property
    def index(self) -> Any:
        """The positions materialised so far."""
        from mixtune.mixtures.sampler import SampleIndex

        idx = self.online.index
        assert idx is not None
        return SampleIndex(task_ids=idx.task_ids, rows=idx.rows)

    def iter_examples(self, start: int = 0, stop: int | None = None, **kwargs: Any) -> Any:
        stop = self._stop if stop is None else min(stop, self._stop)
        self.online.ensure(stop)
        view = copy.copy(self.online.plan)
        view.index = self.index
        return view.iter_examples(start, stop, **kwargs)


class OnlineMixingCallback(TrainerCallback):
    """Per step: collect the step's per-task losses (all processes); per segment: update the weights."""

    def __init__(self, online: OnlineMixing, losses: Any, output_dir: str | Path, *, start_step: int) -> None:
        self.online = online
        self.losses = losses
        self.path = Path(output_dir) / WEIGHTS_FILE
        self.start_step = start_step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from mixtune.train.task_losses import _keep_lines_up_to

        if self.start_step == 0:  # a fresh run (resume=never included) starts the file over
            self.path.unlink(missing_ok=True)
            self._write([self.online.line(0, 0), self.online.line(0, 1)], args)
        else:
            _keep_lines_up_to(self.path, self.start_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sums, tokens = self.losses.take_step(args)
        self.online.add_step(sums, tokens)
        step = state.global_step
        if step % self.online.every_steps:
            return
        k = step // self.online.every_steps - 1
        self.online.end_segment(k)
        if state.is_world_process_zero:
            self._write([self.online.line(step, k + 2)], args)

    def _write(self, lines: list[dict[str, Any]], args: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        if "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                for line in lines:
                    wandb.log({"train/global_step": line["step"],
                               **{f"mixing_weight/{name}": w for name, w in line["weights"].items()}})


def read_weights(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's `mixing_weights.jsonl` (empty for a static run)."""
    path = Path(output_dir) / WEIGHTS_FILE
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
