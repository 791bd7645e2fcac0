"""`build_mixture`: stream a plan's formatted examples into a Hugging Face dataset folder, atomically and
reproducibly, in bounded memory.

The folder is what `Dataset.save_to_disk` writes (`datasets.load_from_disk` reads it): Arrow stream shards
`data-NNNNN-of-MMMMM.arrow` of record batches of DATASETS_BATCH_ROWS rows, `state.json` and
`dataset_info.json`. Examples are formatted and written a chunk at a time, so memory does not grow with the
number of examples; a new shard starts once one holds SHARD_BYTES. Below SHARD_BYTES (one shard) the files
are byte for byte those `save_to_disk` writes for the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from mixtune.io import atomic_directory, atomic_write_json, remove_stale_siblings
from mixtune.mixtures.plan import EXAMPLE_SCHEMA, MixturePlan

MANIFEST = "mixture_manifest.json"
#: Rows per Arrow record batch: the `datasets` ArrowWriter's default batch size, as `save_to_disk` writes.
DATASETS_BATCH_ROWS = 1000
#: A shard is closed once it holds this many bytes of Arrow data (`save_to_disk`'s default max_shard_size).
SHARD_BYTES = 500 * 10**6
#: Examples formatted at a time (a multiple of DATASETS_BATCH_ROWS); bounds the build's working memory.
CHUNK_ROWS = 8 * DATASETS_BATCH_ROWS


def build_mixture(plan: MixturePlan, out_dir: str | Path, *, tokenizer: Any = None,
                  max_source_length: int | None = None, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write every example of `plan`, in sampled order, to `out_dir` (`datasets.load_from_disk` reads it).

    Columns: prompt, completion, task, category, source, position, instance_id, references. The folder
    also holds `mixture_manifest.json` (the plan summary). The same plan gives the same files byte for
    byte (the dataset fingerprint is the mixture hash). On failure `out_dir` keeps its previous content
    (or stays absent); what a killed earlier build left beside `out_dir` is cleared first.
    """
    out_dir = Path(out_dir)
    remove_stale_siblings(out_dir)
    with atomic_directory(out_dir) as tmp:
        tables = plan.iter_tables(tokenizer=tokenizer, max_source_length=max_source_length,
                                  batch_size=CHUNK_ROWS)
        shards = _write_shards(_rebatched(tables), tmp, shard_bytes)
        names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
        for shard, name in zip(shards, names, strict=True):
            os.replace(shard, tmp / name)
        _write_dataset_json(tmp, names, description=f"mixtune mixture {plan.spec.name!r} (hash {plan.hash})",
                            fingerprint=f"mixtune-{plan.hash}")
        atomic_write_json(tmp / MANIFEST, plan.summary())
        _readable(tmp)
    return out_dir


def _rebatched(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The same rows in tables of a multiple of DATASETS_BATCH_ROWS rows (the last one excepted), so record
    batches fall where `save_to_disk` puts them even when a plan yields uneven chunks."""
    pending: pa.Table | None = None
    for table in tables:
        pending = table if pending is None else pa.concat_tables([pending, table])
        whole = len(pending) - len(pending) % DATASETS_BATCH_ROWS
        if whole:
            yield pending.slice(0, whole)
            pending = pending.slice(whole)
    if pending is not None and len(pending):
        yield pending


def _write_shards(tables: Iterator[pa.Table], folder: Path, shard_bytes: int) -> list[Path]:
    """Write the tables into shard files of about `shard_bytes`, with `datasets`' ArrowWriter (as `save_to_disk`)."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(EXAMPLE_SCHEMA)
    shards: list[Path] = []
    writer: ArrowWriter | None = None
    size = 0

    def open_shard() -> ArrowWriter:
        shards.append(folder / f"shard-{len(shards):05d}.arrow.tmp")
        return ArrowWriter(features=features, path=str(shards[-1]), embed_local_files=True,
                           writer_batch_size=DATASETS_BATCH_ROWS)

    try:
        for table in tables:  # each a multiple of DATASETS_BATCH_ROWS rows but the last
            if writer is None:
                writer, size = open_shard(), 0
            writer.write_table(table)
            size += table.nbytes
            if size >= shard_bytes:
                writer.finalize()
                writer = None
        if not shards:  # an empty mixture: one empty shard, as save_to_disk writes
            writer = open_shard()
        if writer is not None:
            writer.finalize()
            writer = None
    finally:
        if writer is not None:
            writer.close()
    return shards


def _write_dataset_json(folder: Path, shard_names: list[str], *, description: str, fingerprint: str) -> None:
    """`state.json` and `dataset_info.json` as `Dataset.save_to_disk` writes them."""
    from datasets import DatasetInfo, Features
    from datasets.utils.py_utils import asdict

    state = {"_data_files": [{"filename": name} for name in shard_names], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    with open(folder / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    info = asdict(DatasetInfo(description=description, features=Features.from_arrow_schema(EXAMPLE_SCHEMA)))
    with open(folder / "dataset_info.json", "w", encoding="utf-8") as f:
        json.dump({key: info[key] for key in sorted(info)}, f, indent=2)


def _readable(folder: Path) -> None:
    """Give the output the usual permissions (temporary files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)
