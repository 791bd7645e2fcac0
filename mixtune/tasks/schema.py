"""One schema for a task, whatever collection it comes from (SuperNI folder, HF dataset, JSONL).

A `TaskInfo` is the task's header (definition, demonstrations, categories, languages) and is
small; a task's instances stay on disk in a memory-mapped Arrow table with the columns
`id: string`, `input: string`, `output: list<string>` (see `TaskCollection.instances`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

INSTANCE_SCHEMA = pa.schema([("id", pa.string()), ("input", pa.string()), ("output", pa.list_(pa.string()))])
UNCATEGORIZED = "Uncategorized"


@dataclass(frozen=True)
class Demonstration:
    """A positive or negative example shown in the instruction (SuperNI `Positive Examples`)."""

    input: str
    output: str
    explanation: str = ""


@dataclass(frozen=True)
class Instance:
    """One instance of a task: an input and one or more reference outputs."""

    id: str
    input: str
    output: tuple[str, ...]


@dataclass(frozen=True)
class TaskInfo:
    """A task's header: everything but its instances."""

    name: str
    definition: str
    positive_examples: tuple[Demonstration, ...] = ()
    negative_examples: tuple[Demonstration, ...] = ()
    categories: tuple[str, ...] = ()
    input_language: tuple[str, ...] = ()
    output_language: tuple[str, ...] = ()
    instruction_language: tuple[str, ...] = ()
    num_instances: int = 0
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def category(self) -> str:
        """The task's category: its first `Categories` entry, as the SuperNI evaluation uses."""
        return self.categories[0] if self.categories else UNCATEGORIZED


@dataclass(frozen=True)
class Split:
    """A named split of a collection: task names for training, testing and exclusion."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    excluded: tuple[str, ...]

    @property
    def held_out(self) -> frozenset[str]:
        """Tasks an evaluation on this split holds out: test + excluded."""
        return frozenset(self.test) | frozenset(self.excluded)


class TaskCollection(Protocol):
    """A set of tasks read through one schema. Implemented for SuperNI folders, HF datasets and JSONL."""

    name: str
    path: Path | str

    def task_names(self) -> list[str]:
        """All task names, sorted."""
        ...

    def info(self, task: str) -> TaskInfo:
        """The header of `task`; raises DataError (with near-name suggestions) when unknown."""
        ...

    def instances(self, task: str) -> pa.Table:
        """The task's instances as a (memory-mapped) Arrow table with INSTANCE_SCHEMA, in file order."""
        ...

    def split(self, name: str = "default") -> Split | None:
        """The named split, or None when the collection has no split files."""
        ...

    def content_key(self, task: str) -> str:
        """A hash of the task's content: equal keys mean identical instances."""
        ...
