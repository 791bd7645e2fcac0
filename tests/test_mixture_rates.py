"""Rates: examples-proportional with cap and temperature, weights, nesting (math and on the bundled sample)."""

from __future__ import annotations

import numpy as np
import pytest

from mixtune.mixtures import load_mixture, plan_mixture
from mixtune.mixtures.rates import apportion, mixing_rates, nest


def test_temperature_one_is_proportional():
    assert mixing_rates([10, 20, 70]) == pytest.approx([0.1, 0.2, 0.7])


def test_large_temperature_tends_to_uniform():
    rates = mixing_rates([1, 100, 10_000], temperature=1e6)
    assert rates == pytest.approx([1 / 3] * 3, abs=1e-4)
    # temperature 2: square roots
    assert mixing_rates([1, 100, 10_000], temperature=2) == pytest.approx(np.array([1, 10, 100]) / 111)


def test_cap_and_weights():
    assert mixing_rates([10, 200, 1000], cap=100) == pytest.approx(np.array([10, 100, 100]) / 210)
    assert mixing_rates([10, 10], weights=[3, 1]) == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        mixing_rates([1, 2], temperature=0)


def test_nest_multiplies_through():
    inner = mixing_rates([20, 80])
    rates = nest([(1.0, np.array([0.5, 0.5])), (0.5, inner)])
    assert rates == pytest.approx([1 / 3, 1 / 3, (1 / 3) * 0.2, (1 / 3) * 0.8])
    assert rates.sum() == pytest.approx(1.0)


def test_apportion_sums_to_total_and_is_close():
    rates = mixing_rates([3, 7, 11, 13], temperature=1.7)
    counts = apportion(rates, 1001)
    assert counts.sum() == 1001
    assert np.all(np.abs(counts - rates * 1001) < 1)


def _write(path, text):
    path.write_text(text)
    return path


def test_nested_plan_on_bundled_sample(tmp_path):
    """Own sources (temperature 2, cap 30, an explicit weight) and a sub-mixture with weight 0.5."""
    _write(tmp_path / "sub.yaml", """
name: sub
temperature: 1.0
sources:
  - {name: sn, path: bundled, split: default, missing_tasks: skip, tasks: {include: ["*classification*"]}}
""")
    top = _write(tmp_path / "top.yaml", """
name: top
seed: 3
total_examples: 1200
temperature: 2.0
max_instances_per_task: 30
sources:
  - name: sn
    path: bundled
    split: default
    missing_tasks: skip
    weight: 2.0
    tasks: {exclude: ["*classification*"], weights: {task1572_samsum_summary: 3.0}}
mixtures:
  - {path: sub.yaml, weight: 0.5}
""")
    plan = plan_mixture(load_mixture(top))
    summary = plan.summary()
    rates = np.array([t["rate"] for t in summary["tasks"]])
    assert rates.sum() == pytest.approx(1.0)
    own = [t for t in plan.tasks if t.source == "sn"]
    sub = [t for t in plan.tasks if t.source == "sub/sn"]
    assert own and sub and len(own) + len(sub) == len(plan.tasks)
    # the sub-mixture gets 0.5 / 1.5 of the mass; the source weight 2.0 cancels inside its own component
    assert sum(t.rate for t in sub) == pytest.approx(1 / 3)
    weights = [3.0 if t.name == "task1572_samsum_summary" else 1.0 for t in own]
    scores = np.minimum([t.num_instances for t in own], 30) ** 0.5 * np.array(weights)
    assert [t.rate for t in own] == pytest.approx(list(scores / scores.sum() * (2 / 3)))
    # inside the sub-mixture: its own temperature (1) and no cap -> proportional to sizes
    sizes = np.array([t.num_instances for t in sub], dtype=float)
    assert [t.rate for t in sub] == pytest.approx(list(sizes / sizes.sum() / 3))
    assert all(t.cap is None for t in sub) and all(t.cap == 30 for t in own)
    assert all(len(t.pool) == min(t.num_instances, 30) for t in own)
    # expected = rate x N; realised counts (from the index) within one of expected
    for t in summary["tasks"]:
        assert t["expected_examples"] == pytest.approx(t["rate"] * 1200)
        assert abs(t["realised_examples"] - t["expected_examples"]) < 1
    assert {s["name"] for s in summary["sources"]} == {"sn", "sub/sn"}
    assert sum(c["rate"] for c in summary["categories"]) == pytest.approx(1.0)
