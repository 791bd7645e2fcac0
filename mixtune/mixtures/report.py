"""Human-readable views of a mixture plan: a rich table and a rates-per-category plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mixtune.console import print_table


def _fmt_cap(cap: Any) -> str:
    return "-" if cap is None else str(cap)


def tasks_text(tasks: list[dict[str, Any]], spec: Any = None) -> str:
    """'60 tasks × 2 encodings' for a plan's (task, source) entries: the same task taken by several sources
    counts once. Sources that differ only in their encoding are called encodings (needs the mixture `spec`)."""
    names = {t["name"] for t in tasks}
    sources = {t["source"] for t in tasks}
    if len(tasks) == len(names):
        return f"{len(names)} tasks" + (f" from {len(sources)} sources" if len(sources) > 1 else "")
    word = "sources"
    if spec is not None:
        found = [(s.type, s.path, s.split, s.encoding.model_dump_json()) for m in spec.walk() for s in m.sources
                 if s.name in sources]
        if len({f[:3] for f in found}) == 1 and len({f[3] for f in found}) == len(found):
            word = "encodings"
    if len(tasks) == len(names) * len(sources):
        return f"{len(names)} tasks × {len(sources)} {word}"
    return f"{len(names)} tasks ({len(tasks)} task-source pairs over {len(sources)} {word})"


def print_summary(summary: dict[str, Any], console: Console | None = None, *, spec: Any = None) -> None:
    """Print the per-task table, the per-category and per-source totals, the hash and the held-out check."""
    console = console or Console()
    n = summary["total_examples"]
    table = Table(title=f"mixture {summary['name']!r}: {tasks_text(summary['tasks'], spec)}, {n} examples, "
                        f"seed {summary['seed']}")
    for col, justify in [("task", "left"), ("source", "left"), ("category", "left"), ("instances", "right"),
                         ("cap", "right"), ("rate", "right"), ("expected", "right"), ("realised", "right")]:
        table.add_column(col, justify=justify)
    for t in sorted(summary["tasks"], key=lambda t: (-t["rate"], t["source"], t["name"])):
        table.add_row(t["name"], t["source"], t["category"], str(t["num_instances"]), _fmt_cap(t["cap"]),
                      f"{t['rate']:.4f}", f"{t['expected_examples']:.1f}", str(t["realised_examples"]))
    print_table(table, console)
    for key, title in (("categories", "per category"), ("sources", "per source")):
        totals = Table(title=title)
        for col, justify in [(key[:-1] if key == "sources" else "category", "left"), ("tasks", "right"),
                             ("instances", "right"), ("rate", "right"), ("expected", "right"),
                             ("realised", "right")]:
            totals.add_column(col, justify=justify)
        for g in summary[key]:
            totals.add_row(g["name"], str(g["num_tasks"]), str(g["num_instances"]), f"{g['rate']:.4f}",
                           f"{g['expected_examples']:.1f}", str(g["realised_examples"]))
        print_table(totals, console)
    for stage in summary.get("stages", []):
        table = Table(title=f"{stage['name']}: positions {stage['start']}..{stage['stop'] - 1} "
                            f"({stage['stop'] - stage['start']} examples, {len(stage['tasks'])} tasks)")
        for col, justify in [("task", "left"), ("source", "left"), ("category", "left"), ("realised", "right")]:
            table.add_column(col, justify=justify)
        for t in sorted(stage["tasks"], key=lambda t: (-t["realised_examples"], t["source"], t["name"])):
            table.add_row(t["name"], t["source"], t["category"], str(t["realised_examples"]))
        print_table(table, console)
    if "mixing" in summary:
        _print_mixing(summary["mixing"], console)
    held = summary["held_out"]
    note = (f"{len(held['in_mixture'])} held-out task(s) IN the mixture (allowed)" if held["in_mixture"]
            else "no held-out task in the mixture")
    console.print(f"mixture hash: [bold]{summary['hash']}[/bold]   held out: {held['num_tasks']} task(s); {note}")


def _print_mixing(mixing: dict[str, Any], console: Console) -> None:
    """The online re-weighting: method, groups, floor; the rates above are where it starts."""
    table = Table(title=f"online re-weighting: {mixing['method']} ({mixing['paper']}), by {mixing['group_by']}: "
                        f"{mixing['num_groups']} groups, updated every {mixing['every_steps']} steps, floor "
                        f"{mixing['floor']:.4g}, smoothing {mixing['smoothing']:g}; the stream depends on training "
                        "(the counts above are the static rates' only)")
    for col, justify in [("group", "left"), ("tasks", "right"), ("initial rate", "right")]:
        table.add_column(col, justify=justify)
    for g in mixing["groups"]:
        table.add_row(g["name"], str(g["num_tasks"]), f"{g['initial_rate']:.4f}")
    print_table(table, console)


def plot_rates(summary: dict[str, Any], path: str | Path) -> Path:
    """Draw the rate of each category as horizontal bars (largest on top) and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mixtune.io import atomic_write_bytes

    groups = sorted(summary["categories"], key=lambda g: g["rate"])
    names = [f"{g['name']} ({g['num_tasks']})" for g in groups]
    rates = [g["rate"] for g in groups]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(groups) + 1.2)))
    bars = ax.barh(names, rates, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{r:.1%}" for r in rates], padding=3, fontsize=8)
    ax.set_xlabel("sampling rate")
    ax.set_xlim(0, max(rates) * 1.18)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(f"{summary['name']}: rate per category (tasks), {summary['total_examples']} examples")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
