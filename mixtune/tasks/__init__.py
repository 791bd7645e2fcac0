"""Task collections: SuperNI folders, Hugging Face datasets and JSONL tasks, read through one schema."""

from mixtune.tasks.schema import INSTANCE_SCHEMA, Demonstration, Instance, Split, TaskCollection, TaskInfo

__all__ = ["INSTANCE_SCHEMA", "Demonstration", "Instance", "Split", "TaskCollection", "TaskInfo"]
