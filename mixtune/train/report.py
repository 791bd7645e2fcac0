"""The training report: `training_report.md` in the run folder, beside `heldout_eval/` (the eval reports).

Written at the end of every run and by `mixtune report RUN_DIR`, from the run's files only:

- the training loss per category over the steps (`loss_per_category.png`, from `losses.jsonl`);
- per task, the examples the plan meant the run to see (rate × trained examples; for an online mixture, the
  group weights of each segment), the examples it saw
  (its stream positions) and the label tokens it trained on (summed over `losses.jsonl`);
- an online mixture's group weights over the steps (`mixing_weights.png`, from `mixing_weights.jsonl`);
- the held-out evaluations over the steps, each linked to its report.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mixtune.errors import ConfigError
from mixtune.io import atomic_write_bytes, atomic_write_text
from mixtune.train.task_losses import read_losses

REPORT_FILE = "training_report.md"
PLOT_FILE = "loss_per_category.png"
WEIGHTS_PLOT = "mixing_weights.png"


def write_training_report(run_dir: str | Path) -> Path:
    """Write `training_report.md` (and the loss plot) into a finished run's folder; return its path."""
    from mixtune.eval.callback import EVAL_DIR
    from mixtune.eval.report import REPORT_FILE as EVAL_REPORT
    from mixtune.train.final import FINAL, RUN_FILE
    from mixtune.train.online_mixing import read_weights

    run_dir = Path(run_dir)
    info_path = run_dir / FINAL / RUN_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{info_path} cannot be read ({e.__class__.__name__}): not a finished mixtune run",
                          field="RUN_DIR", hint="pass the output_dir of a run that saved final/") from None
    losses = read_losses(run_dir)
    lines = [f"# Training report: {run_dir.name}", "",
             f"{info.get('global_steps')} steps, {info.get('trained_examples')} examples (global batch "
             f"{info.get('global_batch_size')}, {info.get('world_size')} process(es)); mixture "
             f"{info['mixture']['name']!r} (hash {info.get('mixture_hash')}).", ""]
    lines += _loss_section(run_dir, losses)
    weights = read_weights(run_dir)
    lines += _task_section(info, losses, weights)
    lines += _weights_section(run_dir, weights)
    lines += _heldout_section(info, run_dir, EVAL_DIR, EVAL_REPORT)
    path = run_dir / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _loss_section(run_dir: Path, losses: list[dict[str, Any]]) -> list[str]:
    lines = ["## Training loss per category", ""]
    if not losses:
        return [*lines, "No `losses.jsonl` in this run (nothing was logged).", ""]
    plot_category_losses(losses, run_dir / PLOT_FILE)
    lines += [f"![training loss per category]({PLOT_FILE})", "",
              "| category | first logged loss | last logged loss | label tokens |", "| --- | ---: | ---: | ---: |"]
    firsts: dict[str, float | None] = {}
    lasts: dict[str, float | None] = {}
    tokens: dict[str, int] = defaultdict(int)
    for line in losses:
        for name, row in line["per_category"].items():
            firsts.setdefault(name, row["loss"])
            lasts[name] = row["loss"]
            tokens[name] += row["tokens"]
    for name in sorted(tokens, key=lambda n: -tokens[n]):
        lines.append(f"| {name} | {_num(firsts[name])} | {_num(lasts[name])} | {tokens[name]:,} |")
    return [*lines, ""]


def _task_section(info: dict[str, Any], losses: list[dict[str, Any]], weights: list[dict[str, Any]]) -> list[str]:
    planned = planned_examples(info, weights)
    seen = info.get("trained_task_counts") or {}
    tokens: dict[str, int] = defaultdict(int)
    for line in losses:
        for name, row in line["per_task"].items():
            tokens[name] += row["tokens"]
    rule = ("the task's share of its group's weight in each segment (`mixing_weights.jsonl`) × the segment's "
            "examples trained on" if weights else "the task's rate × the examples trained on")
    lines = ["## Examples and tokens per task", "",
             f"Planned: {rule}; seen: its examples among the stream positions trained on; tokens: the label "
             "tokens of its examples in the logged steps.", "",
             "| task | planned examples | seen examples | label tokens |", "| --- | ---: | ---: | ---: |"]
    for name in sorted(planned, key=lambda n: (-planned[n], n)):
        lines.append(f"| {name} | {planned[name]:.1f} | {seen.get(name, 0)} | {tokens.get(name, 0):,} |")
    return [*lines, ""]


def planned_examples(info: dict[str, Any], weights: list[dict[str, Any]]) -> dict[str, float]:
    """Per task, the examples the run was meant to see: its rate × the examples trained on; for an online
    mixture (`weights`: the `mixing_weights.jsonl` records, one per segment), per segment its group's weight ×
    its share of the group (as the sampler splits it) × the examples of the segment that were trained on."""
    from mixtune.mixtures.online import task_groups, within_group_shares

    trained = int(info.get("trained_examples") or 0)
    tasks = info["mixture"]["tasks"]
    rates = np.array([t["rate"] for t in tasks], dtype=np.float64)
    if not weights:
        expected = rates * trained
    else:
        mixing = info["mixture"]["mixing"]
        names, groups = task_groups(tasks, mixing["group_by"])
        members = [np.flatnonzero(groups == g) for g in range(len(names))]
        share = np.empty(len(tasks))
        for m, part in zip(members, within_group_shares(rates, members), strict=True):
            share[m] = part
        segment = int(mixing["every_steps"]) * int(info["global_batch_size"])
        expected = np.zeros(len(tasks))
        for record in weights:
            start = (record["first_step"] - 1) * int(info["global_batch_size"])
            examples = max(0, min(start + segment, trained) - start)
            expected += np.array([record["weights"][n] for n in names])[groups] * share * examples
    planned: dict[str, float] = defaultdict(float)
    for task, value in zip(tasks, expected.tolist(), strict=True):
        planned[task["name"]] += value  # a task taken by several sources (encodings) is one row
    return planned


def _weights_section(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """An online mixture's weights: the plot and, per group, its first and last weight (nothing for static)."""
    if not records:
        return []
    plot_mixing_weights(records, run_dir / WEIGHTS_PLOT)
    first, last = records[0], records[-1]
    lines = ["## Online mixing weights", "",
             f"The sampling probability of each group per segment ({len(records)} segments; segment k starts at "
             f"step `first_step`; `mixing_weights.jsonl`).", "",
             f"![mixing weights over steps]({WEIGHTS_PLOT})", "",
             f"| group | weight at step {first['first_step']} | weight at step {last['first_step']} |",
             "| --- | ---: | ---: |"]
    for name in sorted(last["weights"], key=lambda n: -last["weights"][n]):
        lines.append(f"| {name} | {first['weights'][name]:.4f} | {last['weights'][name]:.4f} |")
    return [*lines, ""]


def plot_mixing_weights(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw each group's weight over the steps (a step line per group) and save it as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["first_step"] for r in records]
    width = steps[1] - steps[0] if len(steps) > 1 else 1
    names = sorted(records[-1]["weights"], key=lambda n: -records[-1]["weights"][n])
    fig, ax = plt.subplots(figsize=(11, 5))
    colors = plt.get_cmap("tab20").colors
    for i, name in enumerate(names):  # each segment drawn over its steps, the last one too
        values = [r["weights"][name] for r in records]
        ax.step([*steps, steps[-1] + width], [*values, values[-1]], where="post", linewidth=1,
                color=colors[i % len(colors)], linestyle=("-", "--", ":")[i // len(colors) % 3],
                label=name if i < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("sampling probability")
    ax.set_title(f"online mixing weights ({len(names)} groups; legend: the 20 largest at the end)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save_png(fig, path)


def _heldout_section(info: dict[str, Any], run_dir: Path, eval_dir: str, eval_report: str) -> list[str]:
    history = (info.get("heldout_eval") or {}).get("history") or []
    lines = ["## Held-out evaluations", ""]
    if not history:
        return [*lines, "The run had no held-out evaluation (`eval:` section).", ""]
    lines += ["| step | score | report |", "| ---: | ---: | --- |"]
    for entry in history:
        report = Path(eval_dir) / f"step-{entry['step']}" / eval_report
        link = f"[{report}]({report})" if (run_dir / report).is_file() else "-"
        lines.append(f"| {entry['step']} | {_num(entry.get('value'))} | {link} |")
    return [*lines, ""]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot_category_losses(losses: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw each category's training loss over the logged steps and save it as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for line in losses:
        for name, row in line["per_category"].items():
            if row["loss"] is not None:
                curves[name][0].append(line["step"])
                curves[name][1].append(row["loss"])
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.get_cmap("tab20").colors
    for i, name in enumerate(sorted(curves)):
        steps, values = curves[name]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1, label=name,
                color=colors[i % len(colors)], linestyle=("-", "--", ":")[i // len(colors) % 3])
    ax.plot([x["step"] for x in losses if x["loss"] is not None],
            [x["loss"] for x in losses if x["loss"] is not None], color="black", linewidth=2, label="all")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (token-weighted)")
    ax.set_title("training loss per category")
    ax.legend(fontsize=6, ncol=2 if len(curves) > 12 else 1, loc="upper right")
    return _save_png(fig, path)


def _save_png(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
