"""`MixturePlan.without_instances`: a derived plan that never shows some instances (decontamination's `--drop`)."""

from __future__ import annotations

import numpy as np

from mixtune.mixtures.plan import plan_mixture
from mixtune.mixtures.spec import load_mixture


def _plan(bundled_dir):
    return plan_mixture(load_mixture({"name": "m", "seed": 3, "total_examples": 400, "sources": [
        {"name": "s", "path": str(bundled_dir), "split": "default", "missing_tasks": "skip",
         "tasks": {"include": ["task1*"]}}]}))


def _rows(plan) -> list[tuple[str, str]]:
    return [(t, i) for batch in plan.iter_batches() for t, i in zip(batch["task"], batch["instance_id"], strict=True)]


def test_listed_instances_are_redrawn_from_clean_ones(bundled_dir) -> None:
    plan = _plan(bundled_dir)
    k = int(np.argmax(plan.realised_counts()))
    task = plan.tasks[k]
    bad_rows = sorted(set(plan.index.rows[plan.index.task_ids == k].tolist()))[:3]
    ids = task.table().column("id").to_pylist()
    bad_ids = {str(ids[r]) for r in bad_rows}
    clean = plan.without_instances({(task.source, task.name): bad_rows}, stream=7, tag="t", mark="x")
    before, after = _rows(plan), _rows(clean)
    hit = [t == task.name and i in bad_ids for t, i in before]
    assert any(hit) and len(after) == len(before) == len(clean) == len(plan)
    assert clean.redrawn == sum(hit) and clean.dropped == 0
    assert not any(t == task.name and i in bad_ids for t, i in after)
    for (t0, i0), (t1, i1), h in zip(before, after, hit, strict=True):
        assert t0 == t1  # every example keeps its task
        assert h or i0 == i1  # and every example that drew a clean instance keeps it
    assert clean.hash.startswith(plan.hash + "-x") and clean.hash != plan.hash
    again = plan.without_instances({(task.source, task.name): bad_rows}, stream=7, tag="t", mark="x")
    assert _rows(again) == after and again.hash == clean.hash  # seeded
    assert len(plan) == len(plan.index) and plan.keep is None  # the source plan is untouched


def test_a_task_without_clean_instances_is_dropped_and_positions_keep_their_numbers(bundled_dir) -> None:
    plan = _plan(bundled_dir)
    task = plan.tasks[0]
    gone = plan.without_instances({(task.source, task.name): task.pool.tolist()}, stream=7, tag="all", mark="x")
    n = int((plan.index.task_ids == 0).sum())
    assert n > 0 and gone.dropped == n and len(gone) == len(plan) - n
    positions = [p for batch in gone.iter_batches(batch_size=64) for p in batch["position"]]
    assert positions == [p for p in range(len(plan)) if plan.index.task_ids[p] != 0]
    assert gone.summary()["total_examples"] == len(gone)
