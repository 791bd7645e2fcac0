"""Checkpoint completion marker, picking a checkpoint to resume from, and the position stream."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mixtune.errors import ConfigError
from mixtune.train import checkpoint as ckpt
from mixtune.train.data import PositionStream, stream_examples


def _checkpoint(out: Path, step: int, *, complete: bool) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        ckpt.mark_complete(folder, ckpt.StreamState(global_step=step, position=step * 8, mixture_hash="h",
                                                    global_batch_size=8, world_size=2))
    return folder


def test_auto_resume_picks_latest_complete_and_ignores_incomplete(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2, complete=True)
    four = _checkpoint(tmp_path, 4, complete=True)
    _checkpoint(tmp_path, 10, complete=True)
    (tmp_path / "checkpoint-10" / ckpt.MARKER).unlink()  # a save interrupted before its marker
    _checkpoint(tmp_path, 6, complete=False)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert ckpt.latest_complete(tmp_path) == four
    assert ckpt.resolve_resume("auto", tmp_path) == four
    assert ckpt.resolve_resume("never", tmp_path) is None
    assert ckpt.read_state(four).position == 32


def test_auto_resume_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert ckpt.resolve_resume("auto", tmp_path / "missing") is None
    _checkpoint(tmp_path, 3, complete=False)
    assert ckpt.resolve_resume("auto", tmp_path) is None


def test_explicit_resume_path_must_be_complete(tmp_path: Path) -> None:
    bad = _checkpoint(tmp_path, 6, complete=False)
    with pytest.raises(ConfigError, match="incomplete"):
        ckpt.resolve_resume(str(bad), tmp_path, recipe_path="r.yaml")
    with pytest.raises(ConfigError, match="not found"):
        ckpt.resolve_resume(str(tmp_path / "checkpoint-99"), tmp_path)
    good = _checkpoint(tmp_path, 8, complete=True)
    assert ckpt.resolve_resume(str(good), tmp_path) == good


def test_remove_incomplete_keeps_complete(tmp_path: Path) -> None:
    keep = _checkpoint(tmp_path, 2, complete=True)
    drop = _checkpoint(tmp_path, 4, complete=False)
    assert ckpt.remove_incomplete(tmp_path) == [drop]
    assert keep.exists() and not drop.exists()


def test_marker_is_written_after_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files land (os.replace of the atomic writes) state first, marker last."""
    landed: list[str] = []
    real_replace = os.replace

    def logging_replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        landed.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", logging_replace)
    folder = _checkpoint(tmp_path, 2, complete=True)
    assert landed == [ckpt.STATE_FILE, ckpt.MARKER]
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("crash_at", [ckpt.STATE_FILE, ckpt.MARKER])
def test_a_save_killed_before_its_marker_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        crash_at: str) -> None:
    """A crash while the state or the marker is written leaves a checkpoint that auto-resume skips."""
    earlier = _checkpoint(tmp_path, 2, complete=True)
    real_replace = os.replace

    def crashing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == crash_at:
            raise KeyboardInterrupt  # the process dies here (as under SIGINT)
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint(tmp_path, 4, complete=True)
    monkeypatch.undo()
    assert not ckpt.is_complete(tmp_path / "checkpoint-4")
    assert not list((tmp_path / "checkpoint-4").glob(".*.tmp"))  # the interrupted write cleaned up
    assert ckpt.latest_complete(tmp_path) == earlier == ckpt.resolve_resume("auto", tmp_path)


def test_unreadable_state_is_a_clear_error(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 2, complete=True)
    (folder / ckpt.STATE_FILE).write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match="stream state"):
        ckpt.read_state(folder)


def test_stream_shards_global_batches_in_rank_order() -> None:
    """accelerate deals each global batch of consecutive positions out to the ranks in order."""
    from accelerate.data_loader import IterableDatasetShard

    stream = PositionStream(start=100, stop=124)
    shards = [list(IterableDatasetShard(stream, batch_size=3, num_processes=2, process_index=r)) for r in range(2)]
    assert shards[0] == [100, 101, 102, 106, 107, 108, 112, 113, 114, 118, 119, 120]
    assert shards[1] == [103, 104, 105, 109, 110, 111, 115, 116, 117, 121, 122, 123]


@pytest.fixture(scope="module")
def small_plan():
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    return plan_mixture(load_mixture({
        "name": "small", "seed": 3, "total_examples": 10, "max_instances_per_task": 4,
        "sources": [{"name": "superni", "split": "default", "missing_tasks": "skip"}]}))


def test_stream_wraps_around_epochs(small_plan) -> None:
    n = len(small_plan)
    got = stream_examples(small_plan, [n - 2, n - 1, n, n + 1, 3 * n + 4])
    want = [small_plan.example(p) for p in (n - 2, n - 1, 0, 1, 4)]
    assert [(e["task"], e["instance_id"], e["prompt"]) for e in got] == \
        [(e["task"], e["instance_id"], e["prompt"]) for e in want]
    assert [e["stream_position"] for e in got] == [n - 2, n - 1, n, n + 1, 3 * n + 4]


def test_trained_task_counts_cover_whole_and_partial_epochs(small_plan) -> None:
    from mixtune.train.run import trained_task_counts

    n = len(small_plan)
    counts = trained_task_counts(small_plan, 2 * n + 3)
    assert sum(counts.values()) == 2 * n + 3
    first = [small_plan.example(p)["task"] for p in range(3)]
    full = {t["name"]: t["realised_examples"] for t in small_plan.summary()["tasks"]}
    for task, c in counts.items():
        assert c == 2 * full[task] + first.count(task)


@pytest.mark.parametrize("workers", [2, 3])
def test_dataloader_workers_give_the_same_batches(workers) -> None:
    """Worker w yields micro-batches w, w+W, ...; the DataLoader's round robin restores the stream order."""
    from torch.utils.data import DataLoader

    def batches(num_workers: int, start: int) -> list[list[int]]:
        stream = PositionStream(start=start, stop=start + 40, micro_batch=4)
        loader = DataLoader(stream, batch_size=4, num_workers=num_workers, collate_fn=list)
        return [[int(p) for p in b] for b in loader]

    expected = [list(range(lo, lo + 4)) for lo in range(100, 140, 4)]
    assert batches(0, 100) == expected
    assert batches(workers, 100) == expected
    assert batches(workers, 112) == expected[3:] + [list(range(140, 144)), list(range(144, 148)),
                                                     list(range(148, 152))]  # resumed mid-stream


def test_workers_under_accelerate_process_sharding() -> None:
    """Two processes x two workers: each process gets its slice of every global micro-batch, in order."""
    from accelerate.data_loader import IterableDatasetShard
    from torch.utils.data import DataLoader

    for rank in (0, 1):
        shard = IterableDatasetShard(PositionStream(0, 24, micro_batch=4), batch_size=2, num_processes=2,
                                     process_index=rank)
        got = [[int(p) for p in b] for b in DataLoader(shard, batch_size=2, num_workers=2, collate_fn=list)]
        assert got == [[lo + 2 * rank, lo + 2 * rank + 1] for lo in range(0, 24, 4)]
