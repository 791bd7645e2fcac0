"""Task collections: SuperNI folders, Hugging Face datasets and JSONL tasks, read through one schema."""

from mixtune.tasks.collection import COLLECTION_TYPES, bundled_path, open_collection, resolve_collection_path
from mixtune.tasks.hf import HFCollection
from mixtune.tasks.jsonl import JsonlCollection
from mixtune.tasks.schema import INSTANCE_SCHEMA, Demonstration, Instance, Split, TaskCollection, TaskInfo
from mixtune.tasks.superni import SuperNICollection

__all__ = [
    "COLLECTION_TYPES",
    "INSTANCE_SCHEMA",
    "Demonstration",
    "HFCollection",
    "Instance",
    "JsonlCollection",
    "Split",
    "SuperNICollection",
    "TaskCollection",
    "TaskInfo",
    "bundled_path",
    "open_collection",
    "resolve_collection_path",
]
