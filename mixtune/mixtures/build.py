"""`build_mixture`: stream a plan's formatted examples into a Hugging Face dataset folder, atomically and
reproducibly, in bounded memory.

The folder is what `Dataset.save_to_disk` writes (`datasets.load_from_disk` reads it): Arrow stream shards
`data-NNNNN-of-MMMMM.arrow` of record batches of DATASETS_BATCH_ROWS rows, `state.json` and
`dataset_info.json`. Examples are formatted about CHUNK_BYTES at a time and written straight into the
shards, so memory does not grow with the number of examples (besides the chunk, at most one staging batch
of STAGING_ROWS examples is held, see `_staging_pieces`); a new shard starts once one holds SHARD_BYTES
(`_batch_bytes`). With one shard the files are byte for byte those of the pre-streaming build (all its
examples in a staging file, then `save_to_disk`; it split larger outputs into shards of equal size, which
needs the total before writing: here the last shard is the smaller one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixtune.io import atomic_directory, atomic_write_json, remove_stale_siblings
from mixtune.mixtures.plan import EXAMPLE_SCHEMA, MixturePlan

MANIFEST = "mixture_manifest.json"
#: Rows per Arrow record batch: the `datasets` ArrowWriter's default batch size, as `save_to_disk` writes.
DATASETS_BATCH_ROWS = 1000
#: A shard is closed once it holds this many bytes of Arrow data (`save_to_disk`'s default max_shard_size).
SHARD_BYTES = 500 * 10**6
#: Output bytes formatted at a time (bounds the build's working memory), and the most examples at a time.
CHUNK_BYTES = 48 * 2**20
MAX_CHUNK_ROWS = 256 * DATASETS_BATCH_ROWS
#: Chunks whose instances are read at once (a task's rows in one `take`; instances are a fraction of the
#: formatted bytes, which repeat each task's definition and demonstrations).
READ_BATCHES = 4
#: Positions per batch of the pre-streaming build's staging file (see `_rebatched`).
STAGING_ROWS = 16384
#: The columns whose bytes count towards a shard's size.
SIZED_COLUMNS = ("prompt", "completion", "task", "category", "source", "instance_id")


def build_mixture(plan: MixturePlan, out_dir: str | Path, *, tokenizer: Any = None,
                  max_source_length: int | None = None, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write every example of `plan`, in sampled order, to `out_dir` (`datasets.load_from_disk` reads it).

    Columns: prompt, completion, task, category, source, position, instance_id, references. The folder
    also holds `mixture_manifest.json` (the plan summary). The same plan gives the same files byte for
    byte (the dataset fingerprint is the mixture hash). On failure `out_dir` keeps its previous content
    (or stays absent); what a killed earlier build left beside `out_dir` is cleared first.
    """
    if plan.spec.mixing.strategy == "online":
        from mixtune.errors import ConfigError

        raise ConfigError("an online mixture has no fixed stream to build: its examples depend on the losses "
                          "seen in training", path=plan.spec.path, field="mixing.strategy",
                          hint="to build its initial (static) rates, add mixing.strategy=static after the mixture file")
    out_dir = Path(out_dir)
    remove_stale_siblings(out_dir)
    fmt = {"tokenizer": tokenizer, "max_source_length": max_source_length}
    with atomic_directory(out_dir) as tmp:
        sample = next(plan.iter_tables(0, DATASETS_BATCH_ROWS, batch_size=DATASETS_BATCH_ROWS, **fmt), None)
        rows = _chunk_rows(sample)
        tables = plan.iter_tables(batch_size=rows, read_batches=READ_BATCHES, **fmt)
        shards = _write_shards(_rebatched(_staging_pieces(tables)), tmp, shard_bytes)
        names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
        for shard, name in zip(shards, names, strict=True):
            os.replace(shard, tmp / name)
        _write_dataset_json(tmp, names, description=f"mixtune mixture {plan.spec.name!r} (hash {plan.hash})",
                            fingerprint=f"mixtune-{plan.hash}")
        atomic_write_json(tmp / MANIFEST, plan.summary())
        _readable(tmp)
    return out_dir


def _chunk_rows(sample: pa.Table | None) -> int:
    """Examples to format at a time: about CHUNK_BYTES of output by the sample's size per example (a
    multiple of DATASETS_BATCH_ROWS, at most MAX_CHUNK_ROWS). The files do not depend on it."""
    per_row = sample.nbytes / len(sample) if sample is not None and len(sample) else 1
    rows = int(CHUNK_BYTES / per_row) // DATASETS_BATCH_ROWS * DATASETS_BATCH_ROWS
    return min(max(rows, DATASETS_BATCH_ROWS), MAX_CHUNK_ROWS)


def _staging_pieces(tables: Iterator[pa.Table]) -> Iterator[tuple[pa.Table, bool]]:
    """The rows in pieces inside the pre-streaming build's staging batches (the examples of each STAGING_ROWS
    positions), each with whether it is a whole staging batch starting at a multiple of DATASETS_BATCH_ROWS
    rows: such a batch is held and joined into one piece (see `_rebatched`), the others are streamed."""
    held: list[pa.Table] = []
    window, rows, aligned = -1, 0, False
    for table in tables:
        windows = table.column("position").to_numpy() // STAGING_ROWS
        cuts = [0, *(np.flatnonzero(np.diff(windows)) + 1).tolist(), len(table)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            if windows[lo] != window:  # a staging batch starts
                if held:
                    yield pa.concat_tables(held), True
                    held = []
                window, aligned = int(windows[lo]), rows % DATASETS_BATCH_ROWS == 0
            rows += hi - lo
            if aligned:
                held.append(table.slice(lo, hi - lo))
            else:
                yield table.slice(lo, hi - lo), False
    if held:
        yield pa.concat_tables(held), True


def _copied(table: pa.Table) -> pa.Table:
    """`table` in buffers of its own, of its exact size (Arrow's concatenation copies)."""
    if len(table) < 2:
        return pa.Table.from_pylist(table.to_pylist(), schema=table.schema)
    return pa.concat_tables([table.slice(0, 1), table.slice(1)]).combine_chunks()


def _rebatched(pieces: Iterator[tuple[pa.Table, bool]]) -> Iterator[pa.Table]:
    """The rows of `_staging_pieces` as tables of whole record batches (DATASETS_BATCH_ROWS rows; the last
    may be short), laid out in memory as `save_to_disk` laid out the pre-streaming build's staging file, so
    that the Arrow writer pads the buffers the same way and the files are the same bytes.

    `save_to_disk` read the staging file in pieces of DATASETS_BATCH_ROWS rows counted from each staging
    batch's start, and wrote each record batch as one piece (a slice of its staging batch: the writer pads
    its data buffers to 64 bytes) or several (concatenated: no padding). A record batch is one piece when
    its staging batch starts at a multiple of DATASETS_BATCH_ROWS rows.
    """
    size = DATASETS_BATCH_ROWS
    pending: pa.Table | None = None  # the first rows of a record batch across pieces
    for piece, aligned in pieces:
        start = 0
        if pending is not None:
            start = min(size - len(pending), len(piece))
            pending = pa.concat_tables([pending, piece.slice(0, start)])
            if len(pending) == size:
                yield pending.combine_chunks()
                pending = None
        whole = (len(piece) - start) // size * size
        if aligned:  # (then start == 0)
            if whole:
                yield _copied(piece).slice(start, whole)  # slices of this staging batch only
        else:
            for lo in range(start, start + whole, size):
                yield _copied(piece.slice(lo, size))
        if start + whole < len(piece):
            rest = piece.slice(start + whole)
            pending = rest if pending is None else pa.concat_tables([pending, rest])
    if pending is not None:
        yield pending.combine_chunks()


def _batch_bytes(table: pa.Table) -> np.ndarray:
    """Bytes of each DATASETS_BATCH_ROWS-row batch of `table`, counted from its values (string bytes of the
    text columns plus 8 per position), so that shard boundaries depend on the examples only."""
    per_row = np.full(len(table), 8, dtype=np.int64)
    for name in SIZED_COLUMNS:
        per_row += pc.binary_length(table.column(name)).to_numpy().astype(np.int64)
    return np.add.reduceat(per_row, np.arange(0, len(table), DATASETS_BATCH_ROWS)) if len(table) else per_row


def _write_shards(tables: Iterator[pa.Table], folder: Path, shard_bytes: int) -> list[Path]:
    """Write the tables into shard files with `datasets`' ArrowWriter (as `save_to_disk`), a new shard after
    the record batch at which the current one reaches `shard_bytes` (see `_batch_bytes`)."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(EXAMPLE_SCHEMA)
    shards: list[Path] = []
    writer: ArrowWriter | None = None
    size = 0

    def open_shard() -> ArrowWriter:
        shards.append(folder / f"shard-{len(shards):05d}.arrow.tmp")
        # (save_to_disk embeds local image/audio files; the examples are text only, so nothing to embed)
        return ArrowWriter(features=features, path=str(shards[-1]), writer_batch_size=DATASETS_BATCH_ROWS)

    try:
        for table in tables:  # each a multiple of DATASETS_BATCH_ROWS rows but the last
            sizes = _batch_bytes(table)
            first = 0  # batches of `table` before `first` are written
            while first < len(sizes):
                if writer is None:
                    writer, size = open_shard(), 0
                filled = np.flatnonzero(size + np.cumsum(sizes[first:]) >= shard_bytes)
                last = first + int(filled[0]) + 1 if len(filled) else len(sizes)
                writer.write_table(table.slice(first * DATASETS_BATCH_ROWS,
                                               (last - first) * DATASETS_BATCH_ROWS))
                size += int(sizes[first:last].sum())
                first = last
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
