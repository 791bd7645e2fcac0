"""The three generalisation levels of OPT-IML Bench (Iyer et al., 2022), from a model's training mixture.

Beside the overall held-out score, an evaluation of a model whose training mixture is known reports:

1. `unseen_category`: evaluated tasks whose category no task of the mixture has;
2. `unseen_task`: evaluated tasks that are not in the mixture but whose category is;
3. `unseen_instance`: training tasks of the mixture, on instances outside their (capped) pools: the
   instances the model never trained on (the first `unseen_instances_per_task` of them in file order).

Membership comes from the collection (each evaluated task's category) and the mixture plan (its tasks,
their categories, counts, caps and seed; a capped pool is `mixtures.sampler.capped_pool`, the same pure
function the plan draws it with), never from task names. The mixture is read from the `mixtune_run.json`
a mixtune-trained model folder holds (`mixture`, the plan's summary), or from `--mixture PATH` for a
model trained elsewhere: a mixture YAML (planned here) or a `mixtune_run.json` / folder holding one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RUN_FILE = "mixtune_run.json"
LEVELS = ("unseen_category", "unseen_task", "unseen_instance")


@dataclass(frozen=True)
class TrainedTask:
    """One task of a training mixture: its category, instance count and pool cap."""

    name: str
    category: str
    num_instances: int
    cap: int | None


@dataclass(frozen=True)
class TrainingMixture:
    """What a model trained on: the mixture's tasks and the seed its pools were drawn with."""

    name: str
    seed: int
    tasks: dict[str, TrainedTask]
    source: str

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(t.category for t in self.tasks.values())

    def unseen_rows(self, task: str) -> list[int]:
        """Rows (file order) of a training task outside its pool: all rows the model never trained on."""
        import numpy as np

        from mixtune.mixtures.sampler import capped_pool

        t = self.tasks[task]
        pool = capped_pool(t.num_instances, t.cap, self.seed, task)
        return np.setdiff1d(np.arange(t.num_instances), pool).tolist()


def from_summary(summary: dict[str, Any], source: str) -> TrainingMixture:
    """A TrainingMixture from a plan summary (`MixturePlan.summary()`, as mixtune_run.json records it)."""
    try:
        tasks = {t["name"]: TrainedTask(t["name"], t["category"], int(t["num_instances"]), t.get("cap"))
                 for t in summary["tasks"]}
        return TrainingMixture(str(summary.get("name", "")), int(summary["seed"]), tasks, source)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"not a mixture summary (missing or bad {e})", path=source, field="mixture",
                        hint="pass a mixture YAML or the mixtune_run.json of a mixtune-trained model") from None


def _read_run_file(path: Path) -> TrainingMixture:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the run record ({e})", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("mixture"), dict):
        raise DataError("no 'mixture' in the run record", path=path, field="mixture",
                        hint="pass --mixture with the mixture YAML the model was trained on")
    return from_summary(data["mixture"], str(path))


def training_mixture(model_dir: str | Path | None, mixture: str | Path | None) -> TrainingMixture | None:
    """The mixture a model trained on: `mixture` (a mixture YAML, or a mixtune_run.json or a folder with
    one) when given, else the model folder's mixtune_run.json; None when neither is known."""
    if mixture is not None:
        path = Path(mixture).expanduser()
        if path.is_dir():
            path = path / RUN_FILE
        if not path.exists():
            raise ConfigError("mixture file not found", path=path, field="mixture",
                              hint="a mixture YAML, or a mixtune_run.json (or the model folder holding it)")
        if path.suffix == ".json":
            return _read_run_file(path)
        from mixtune.mixtures.plan import plan_mixture
        from mixtune.mixtures.spec import load_mixture

        return from_summary(plan_mixture(load_mixture(path)).summary(), str(path))
    if model_dir is not None and (Path(model_dir) / RUN_FILE).is_file():
        return _read_run_file(Path(model_dir) / RUN_FILE)
    return None


def level_tasks(mixture: TrainingMixture, collection: Any, tasks: list[str]) -> dict[str, list[str]]:
    """The evaluated `tasks` of the first two levels: {"unseen_category": [...], "unseen_task": [...]}.
    Evaluated tasks that are in the mixture belong to neither."""
    seen = mixture.categories
    out: dict[str, list[str]] = {"unseen_category": [], "unseen_task": []}
    for task in tasks:
        if task in mixture.tasks:
            continue
        level = "unseen_task" if collection.info(task).category in seen else "unseen_category"
        out[level].append(task)
    return out


def unseen_instances(mixture: TrainingMixture, collection: Any, per_task: int) -> list[tuple[str, dict[str, Any]]]:
    """(task, instance) of the third level: for each training task the collection has (with the same
    number of instances, so rows mean the same instances), its first `per_task` rows outside the pool."""
    import pyarrow as pa

    chosen: list[tuple[str, dict[str, Any]]] = []
    if per_task < 1:
        return chosen
    present = set(collection.task_names())
    for task in sorted(mixture.tasks):
        if task not in present:
            continue
        n = collection.instances(task).num_rows
        if n != mixture.tasks[task].num_instances:
            log.warning("task %s has %d instances in the evaluated collection but %d in the mixture: left out of "
                        "unseen_instance", task, n, mixture.tasks[task].num_instances)
            continue
        rows = mixture.unseen_rows(task)[:per_task]
        if not rows:
            continue
        for row in collection.instances(task).take(pa.array(rows)).to_pylist():
            chosen.append((task, {"id": str(row["id"]), "input": row["input"], "output": list(row["output"])}))
    return chosen
