"""What `mixture select` writes: the mixture YAML (with a header of scores), JSON, a table and a plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mixtune.io import atomic_write_bytes, atomic_write_text
from mixtune.mixtures.task_select.pool import Pool
from mixtune.mixtures.task_select.select import Selection

WEIGHTS = ("uniform", "score")
MIN_WEIGHT = 0.01


def _score(x: float) -> float:
    return round(float(x), 6)


def to_json(selection: Selection) -> dict[str, Any]:
    """`{"method", "targets", "selected": [{"task", "category", "score"}]}`, best first."""
    combined = selection.combined
    return {"method": selection.method, "targets": [t.name for t in selection.targets],
            "selected": [{"task": selection.candidates[i].task, "category": selection.candidates[i].category,
                          "score": _score(combined[i])} for i in selection.selected]}


def score_weights(selection: Selection) -> dict[str, float]:
    """Task weights from the scores: min-max scaled over all candidates (best = 1), at least 0.01."""
    combined = selection.combined
    low, high = float(combined.min()), float(combined[selection.selected[0]])
    weights = {}
    for i in selection.selected:
        w = 1.0 if high == low else (float(combined[i]) - low) / (high - low)
        weights[selection.candidates[i].task] = round(max(w, MIN_WEIGHT), 4)
    return weights


def mixture_yaml(selection: Selection, pool: Pool, *, weights: str = "uniform") -> str:
    """The mixture file: a header comment (method, targets, scores) and a spec `mixture show` accepts."""
    chosen = [selection.candidates[i].task for i in selection.selected]
    task_weights = score_weights(selection) if weights == "score" else {}
    target_names = [t.name for t in selection.targets]
    label = target_names[0] + (f"_and_{len(target_names) - 1}_more" if len(target_names) > 1 else "")
    sources = []
    for source, names in pool.sources:  # each source keeps the chosen tasks it took (e.g. two encodings)
        include = [t for t in chosen if t in set(names)]
        if not include:
            continue
        tasks: dict[str, Any] = {"include": sorted(include)}
        if task_weights:
            tasks["weights"] = {t: task_weights[t] for t in sorted(include)}
        sources.append({**source, "tasks": tasks})
    spec: dict[str, Any] = {"name": f"select_{selection.method}_{label}"}
    spec.update({k: v for k, v in pool.mixture.items() if k != "held_out"})
    spec["sources"] = sources
    held_out = dict(pool.mixture.get("held_out", {}))
    task_targets = sorted(t.name for t in selection.targets if t.category is not None)
    if task_targets:
        held_out["tasks"] = task_targets
    if held_out:
        spec["held_out"] = held_out
    return _header(selection, weights) + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=110)


def _header(selection: Selection, weights: str) -> str:
    method = selection.method + (f" (encoder {selection.encoder})" if selection.encoder else "")
    lines = [f"Chosen by `mixtune mixture select`: method {method}, k {selection.k}",
             f"of {len(selection.candidates)} candidate tasks of {selection.pool_description}; weights: {weights}",
             "target(s): " + ", ".join(t.name + (f" ({t.category})" if t.category else " (file)")
                                       for t in selection.targets)]
    lines += ["", "rank     score  task (category)"]
    combined = selection.combined
    for rank, i in enumerate(selection.selected, 1):
        c = selection.candidates[i]
        lines.append(f"{rank:4d} {combined[i]:9.6f}  {c.task} ({c.category})")
    lines += ["", "mixtune mixture show <this file>;  mixtune mixture build <this file> --out DIR"]
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def write_mixture(path: str | Path, text: str) -> Path:
    """Write the mixture YAML atomically."""
    path = Path(path)
    atomic_write_text(path, text)
    return path


def print_table(selection: Selection) -> None:
    """The selected tasks as a rich table (one score column per target when there are several)."""
    from rich.console import Console
    from rich.table import Table

    many = len(selection.targets) > 1
    table = Table(title=f"{selection.method}: top {selection.k} of {len(selection.candidates)} candidate tasks "
                        f"for {', '.join(t.name for t in selection.targets)}")
    for col in ("rank", "task", "category", "score"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    if many:
        for t in selection.targets:
            table.add_column(t.name[:24], justify="right")
    combined = selection.combined
    for rank, i in enumerate(selection.selected, 1):
        c = selection.candidates[i]
        row = [str(rank), c.task, c.category, f"{combined[i]:.4f}"]
        if many:
            row += [f"{s:.4f}" for s in selection.scores[i]]
        table.add_row(*row)
    Console().print(table)


def plot_selection(selection: Selection, path: str | Path) -> Path:
    """Bars of the selected tasks' scores; for several targets also a task × target heat map. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = selection.selected
    names = [selection.candidates[i].task for i in chosen]
    combined = selection.combined[chosen]
    many = len(selection.targets) > 1
    height = max(2.5, 0.3 * len(chosen) + 1.4)
    fig, axes = plt.subplots(1, 2 if many else 1, figsize=(14 if many else 9, height), squeeze=False)
    ax = axes[0][0]
    ax.barh(names[::-1], combined[::-1], color="#4c72b0")
    ax.set_xlabel(f"{selection.method} score" + (" (mean over targets)" if many else ""))
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"top {selection.k}: {', '.join(t.name for t in selection.targets)}"[:90], fontsize=9)
    if many:
        heat = axes[0][1]
        grid = np.asarray(selection.scores[chosen])
        image = heat.imshow(grid, aspect="auto", cmap="viridis")
        heat.set_yticks(range(len(names)), names, fontsize=7)
        heat.set_xticks(range(len(selection.targets)), [t.name for t in selection.targets], rotation=40,
                        ha="right", fontsize=7)
        heat.set_title("score per target", fontsize=9)
        fig.colorbar(image, ax=heat)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
