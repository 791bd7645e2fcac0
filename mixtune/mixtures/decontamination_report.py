"""The decontamination report: per training task, the instances that overlap the evaluation; printing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mixtune.mixtures.ngram_overlap import Overlap


@dataclass
class TaskCount:
    """Per training task: instances checked and how many overlap (exact, n-gram, either)."""

    source: str
    task: str
    num_instances: int
    exact: int = 0
    ngram: int = 0
    sampled_examples: int = 0

    @property
    def contaminated(self) -> int:
        return self.exact + self.ngram


@dataclass
class DecontaminationReport:
    """The result of checking a mixture's training tasks against evaluation instances."""

    ngram: int
    eval_tasks: list[str]
    num_eval_instances: int
    tasks: list[TaskCount]
    overlaps: list[Overlap]

    @property
    def num_contaminated(self) -> int:
        return len(self.overlaps)

    def contaminated_keys(self) -> set[tuple[str, str, str]]:
        """(source, task, instance_id) of every contaminated training instance."""
        return {(o.source, o.task, o.instance_id) for o in self.overlaps}

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        return {
            "ngram": self.ngram,
            "eval_tasks": self.eval_tasks,
            "num_eval_instances": self.num_eval_instances,
            "num_train_instances": sum(t.num_instances for t in self.tasks),
            "num_contaminated": self.num_contaminated,
            "tasks": [{**asdict(t), "contaminated": t.contaminated} for t in self.tasks],
            "overlaps": [asdict(o) for o in self.overlaps],
        }


def print_report(result: dict[str, Any]) -> None:
    """Print the per-task table of contaminated training tasks and the totals."""
    from rich.console import Console
    from rich.table import Table

    from mixtune.console import print_table

    console = Console()
    table = Table(title=f"training instances overlapping {result['num_eval_instances']} evaluation instances of "
                        f"{len(result['eval_tasks'])} task(s) (exact or {result['ngram']}-gram)")
    for col, justify in [("task", "left"), ("source", "left"), ("instances", "right"), ("exact", "right"),
                         ("n-gram", "right"), ("contaminated", "right"), ("sampled examples", "right")]:
        table.add_column(col, justify=justify)
    for t in result["tasks"]:
        if t["contaminated"]:
            table.add_row(t["task"], t["source"], str(t["num_instances"]), str(t["exact"]), str(t["ngram"]),
                          str(t["contaminated"]), str(t["sampled_examples"]))
    print_table(table, console)
    console.print(f"{result['num_contaminated']} of {result['num_train_instances']} training instances overlap "
                  f"the evaluation")
    if "out" in result:
        console.print(f"wrote {result['total_examples']} examples ({result['replaced_examples']} re-drawn from clean "
                      f"instances of their task, {result['dropped_examples']} dropped) to {result['out']}")
