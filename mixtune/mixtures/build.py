"""`build_mixture`: write a plan's formatted examples as a Hugging Face dataset, atomically and reproducibly."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from mixtune.io import atomic_directory, atomic_write_json, remove_leftovers
from mixtune.mixtures.plan import MixturePlan

MANIFEST = "mixture_manifest.json"

ARROW_SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("task", pa.string()),
    ("category", pa.string()),
    ("source", pa.string()),
    ("position", pa.int64()),
    ("instance_id", pa.string()),
    ("references", pa.list_(pa.string())),
])


def build_mixture(plan: MixturePlan, out_dir: str | Path, *, tokenizer: Any = None,
                  max_source_length: int | None = None, batch_size: int = 16384) -> Path:
    """Write every example of `plan`, in sampled order, to `out_dir` (`datasets.load_from_disk` reads it).

    Columns: prompt, completion, task, category, source, position, instance_id, references. The folder
    also holds `mixture_manifest.json` (the plan summary). The same plan gives the same files byte for
    byte (the dataset fingerprint is the mixture hash); on failure nothing is left at `out_dir`.
    """
    import datasets

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)  # of an earlier build of out_dir that was killed
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".staging", dir=out_dir.parent))
    try:
        arrow_file = staging / "examples.arrow"
        with pa.OSFile(str(arrow_file), "wb") as sink, pa.ipc.new_stream(sink, ARROW_SCHEMA) as writer:
            for batch in plan.iter_batches(tokenizer=tokenizer, max_source_length=max_source_length,
                                           batch_size=batch_size):
                writer.write_batch(pa.RecordBatch.from_pydict(batch, schema=ARROW_SCHEMA))
        table = datasets.table.MemoryMappedTable.from_file(str(arrow_file))
        info = datasets.DatasetInfo(description=f"mixtune mixture {plan.spec.name!r} (hash {plan.hash})")
        dataset = datasets.Dataset(table, info=info, fingerprint=f"mixtune-{plan.hash}")
        with atomic_directory(out_dir) as tmp:
            dataset.save_to_disk(str(tmp))
            atomic_write_json(tmp / MANIFEST, plan.summary())
            _readable(tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _readable(folder: Path) -> None:
    """Give the output the usual permissions (temporary files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)
