"""Evaluation reports: metrics.json, report.md and categories.png in an output folder, and run comparison.

`write_report` takes the model's `Scores` and, optionally, the baselines' (copy_demo, copy_input) and other
models' (e.g. the untrained model) scores, so every report shows them side by side.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.errors import DataError
from mixtune.eval.metrics import METRICS, Scores, primary_metric
from mixtune.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mixtune.limits import json_loads

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOT_FILE = "categories.png"
OFFICIAL_INSTANCES_PER_TASK = 100
LABELS = {"exact_match": "EM", "rougeL": "ROUGE-L"}
TOKENIZER_TEXT = {
    "default": "default (rouge-score's tokenizer with the Porter stemmer, as the official SuperNI script)",
    "multilingual": "multilingual (offline Unicode tokenizer, one token per Han/kana/Thai character, no stemming;"
                    " the official script uses GPT-2's tokenizer here, so numbers differ slightly)",
}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _primary(scores: Scores, category: str) -> float | None:
    row = scores.per_category.get(category)
    return None if row is None else row[primary_metric(category)]


def render_report(
    scores: Scores,
    *,
    name: str = "model",
    baselines: Mapping[str, Scores] | None = None,
    others: Mapping[str, Scores] | None = None,
    meta: Mapping[str, Any] | None = None,
    rank_classification: Mapping[str, Scores] | None = None,
    num_extreme: int = 5,
    levels: Mapping[str, Mapping[str, Any]] | None = None,
    controls: Mapping[str, Mapping[str, Any]] | None = None,
    primary_setting: str | None = None,
) -> str:
    """The Markdown report: overall, per-category table (primary metric in bold), worst/best tasks, the
    generalisation levels and the instruction-sensitivity controls (when evaluated)."""
    baselines = dict(baselines or {})
    others = dict(others or {})
    columns = {name: scores, **others, **baselines}
    counts = scores.num_instances or {}
    n_inst = counts.get("overall", "?")
    per_task_counts = counts.get("per_task", {})
    lines = [f"# Held-out evaluation: {name}", ""]
    lines.append(f"- Instances: {n_inst} over {len(scores.per_task)} tasks in {len(scores.per_category)} categories")
    lines.append(f"- ROUGE tokenizer: {TOKENIZER_TEXT.get(scores.rouge_tokenizer, scores.rouge_tokenizer)}")
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    if per_task_counts and min(per_task_counts.values()) < OFFICIAL_INSTANCES_PER_TASK:
        lines.append(
            f"- Some tasks have fewer than {OFFICIAL_INSTANCES_PER_TASK} instances (min "
            f"{min(per_task_counts.values())}): the numbers are not comparable with published SuperNI results."
        )
    lines += ["", "## Overall", "", "| Run | EM | ROUGE-L |", "|---|---:|---:|"]
    for label, s in columns.items():
        kind = " (baseline)" if label in baselines else ""
        lines.append(f"| {label}{kind} | {_fmt(s.overall['exact_match'])} | {_fmt(s.overall['rougeL'])} |")
    if baselines:
        lines += ["", standing(name, scores, baselines)]

    extra = [*others, *baselines]
    lines += ["", "## Per category", "",
              f"{name}'s EM and ROUGE-L; the category's primary metric (as the Tk-Instruct paper reports) is in "
              "bold" + (", and the other columns show that primary metric." if extra else "."), ""]
    lines.append("| Category | Primary | Instances | EM | ROUGE-L |" + "".join(f" {e} |" for e in extra))
    lines.append("|---|---|---:|---:|---:|" + "---:|" * len(extra))
    cat_counts = counts.get("per_category", {})
    for cat, row in scores.per_category.items():
        prim = primary_metric(cat)
        cells = [f"**{_fmt(row[m])}**" if m == prim else _fmt(row[m]) for m in METRICS]
        others_cells = [_fmt(_primary(columns[e], cat)) for e in extra]
        lines.append(f"| {cat} | {LABELS[prim]} | {cat_counts.get(cat, '?')} | " + " | ".join(cells) + " |"
                     + "".join(f" {c} |" for c in others_cells))

    ranked = sorted(
        ((t, scores.task_category.get(t, ""), row[primary_metric(scores.task_category.get(t, ""))])
         for t, row in scores.per_task.items()),
        key=lambda x: (x[2], x[0]),
    )
    k = min(num_extreme, max(1, len(ranked) // 2))
    for title, rows in (("Worst tasks", ranked[:k]), ("Best tasks", ranked[::-1][:k])):
        lines += ["", f"## {title} (primary metric)", "", "| Task | Category | Metric | Score |" + "".join(
            f" {e} |" for e in extra), "|---|---|---|---:|" + "---:|" * len(extra)]
        for task, cat, value in rows:
            metric = primary_metric(cat)
            base = [_fmt(columns[e].per_task.get(task, {}).get(metric)) for e in extra]
            lines.append(f"| {task} | {cat} | {LABELS[metric]} | {_fmt(value)} |" + "".join(f" {b} |" for b in base))
    if levels:
        lines += ["", *levels_section(levels)]
    if controls:
        lines += ["", *controls_section(controls, primary_setting or name)]
    if rank_classification:
        lines += ["", "## Rank classification (separate from generation)", "",
                  "Tasks with a small label set, each label scored by the model's log-likelihood; exact match.", "",
                  "| Setting | Tasks | Instances | EM |", "|---|---:|---:|---:|"]
        for setting, s in rank_classification.items():
            lines.append(f"| {setting} | {len(s.per_task)} | {s.num_instances.get('overall', '?')} | "
                         f"{_fmt(s.overall['exact_match'])} |")
    return "\n".join(lines) + "\n"


LEVEL_TEXT = {
    "unseen_category": "tasks of categories the training mixture never saw",
    "unseen_task": "unseen tasks of categories the mixture saw",
    "unseen_instance": "instances of training tasks outside the mixture's pools",
}


def levels_section(levels: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's generalisation-levels table (OPT-IML Bench), primary setting."""
    lines = ["## Generalisation levels (primary setting)", "",
             "Membership from the collection and the training mixture (OPT-IML Bench's three levels).", "",
             "| Level | What | Tasks | Instances | EM | ROUGE-L |", "|---|---|---:|---:|---:|---:|"]
    for level, text in LEVEL_TEXT.items():
        row = levels.get(level)
        if row is not None:
            lines.append(f"| {level} | {text} | {len(row['tasks'])} | {row['num_instances']} | "
                         f"{_fmt(row['exact_match'])} | {_fmt(row['rougeL'])} |")
    return lines


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def control_sentence(label: str, control: Mapping[str, Any], overall: Mapping[str, float], primary: str) -> str:
    """One sentence: a control's EM / ROUGE-L and their difference from the primary setting on the same tasks."""
    same = control["primary_on_same_tasks"]
    if same.get("exact_match") is None:
        return f"- **{label}** ({control['changes']}): no task qualified."
    tasks = len(control["tasks"])
    return (f"- **{label}** ({control['changes']}): EM {_fmt(overall['exact_match'])}, ROUGE-L "
            f"{_fmt(overall['rougeL'])}, that is {_signed(overall['exact_match'] - same['exact_match'])} EM and "
            f"{_signed(overall['rougeL'] - same['rougeL'])} ROUGE-L from the primary setting {primary} "
            f"({_fmt(same['exact_match'])} / {_fmt(same['rougeL'])}) on the same {tasks} task(s).")


def controls_section(controls: Mapping[str, Mapping[str, Any]], primary: str) -> list[str]:
    """The report's instruction-sensitivity section: one sentence per control (Kung & Peng 2023)."""
    lines = ["## Instruction-sensitivity controls", "",
             "A model that reads the instructions loses clearly when they are replaced or misleading "
             "(Kung & Peng 2023; Yin et al. 2023).", ""]
    for label, entry in controls.items():
        lines.append(control_sentence(label, entry["control"], entry["overall"], primary))
    return lines


def standing(name: str, scores: Scores, baselines: Mapping[str, Scores]) -> str:
    """One sentence: the run's overall ROUGE-L above or below each baseline, and by how much."""
    ours = scores.overall["rougeL"]
    parts = []
    for label, base in baselines.items():
        theirs = base.overall["rougeL"]
        side = "above" if ours > theirs else "below" if ours < theirs else "level with"
        parts.append(f"{side} {label} ({_fmt(theirs)})" + (f" by {_fmt(abs(ours - theirs))}" if ours != theirs else ""))
    return f"Against the baselines, {name}'s overall ROUGE-L ({_fmt(ours)}) is " + "; ".join(parts) + "."


def plot_categories(
    scores: Scores,
    *,
    name: str = "model",
    baselines: Mapping[str, Scores] | None = None,
    others: Mapping[str, Scores] | None = None,
    chance: Mapping[str, float] | None = None,
) -> bytes:
    """PNG bytes: per-category bars of the primary metric, the model beside the other runs and baselines.

    Each bar is labelled with its value ('n/a' where a run lacks the category), so a zero shows; `chance`
    (category -> EM of a uniform guess among the labels) is drawn as a dashed line over the category."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    baselines = dict(baselines or {})
    columns = {name: scores, **dict(others or {}), **baselines}
    cats = list(scores.per_category)
    fig = Figure(figsize=(max(6.0, 0.9 * len(cats) + 2), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(columns))
    for i, (label, s) in enumerate(columns.items()):
        found = [_primary(s, c) for c in cats]
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(cats))]
        is_baseline = label in baselines and i >= len(columns) - len(baselines)
        bars = ax.bar(xs, [v or 0.0 for v in found], width=width,
                      label=f"{label} (baseline)" if is_baseline else label,
                      hatch="//" if is_baseline else None, alpha=0.75 if is_baseline else 1.0)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.0f}" for v in found], fontsize=6, padding=1)
    label = "chance (uniform guess among the labels)"
    for j, c in enumerate(cats):
        if chance and c in chance:
            ax.hlines(chance[c], j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1, label=label)
            label = None  # one legend entry
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([f"{c}\n({LABELS[primary_metric(c)]})" for c in cats], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("primary metric (0-100)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Held-out categories: {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass
class RunView:
    """One evaluation run as the report shows it: the model's scores and what goes beside them."""

    name: str
    scores: Scores
    baselines: dict[str, Scores] = field(default_factory=dict)
    others: dict[str, Scores] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    rank_classification: dict[str, Scores] = field(default_factory=dict)
    levels: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, Any] = field(default_factory=dict)
    primary_setting: str | None = None


def run_view(metrics: Scores | Mapping[str, Any], *, name: str | None = None,
             baselines: Mapping[str, Scores] | None = None, others: Mapping[str, Scores] | None = None,
             meta: Mapping[str, Any] | None = None) -> RunView:
    """Read a `Scores`, a `Scores.to_json()`/report metrics.json dict, or `mixtune eval run`'s metrics.json
    (one score table per setting under "settings", the first being "primary_setting")."""
    extra_meta: dict[str, Any] = {}
    rank: dict[str, Scores] = {}
    levels: dict[str, Any] = {}
    controls: dict[str, Any] = {}
    primary: str | None = None
    found_baselines: dict[str, Scores] = {}
    found_others: dict[str, Scores] = {}
    if isinstance(metrics, Scores):
        scores = metrics
    elif "settings" in metrics and metrics.get("settings"):
        settings = metrics["settings"]
        primary = metrics.get("primary_setting") or next(iter(settings))
        scores = Scores.from_json(settings[primary])
        model = metrics.get("model", "model")
        name = name or f"{Path(str(model)).name or model} [{primary}]"
        found_others = {f"{Path(str(model)).name or model} [{s}]": Scores.from_json(v)
                        for s, v in settings.items() if s != primary}
        found_others.update({k: Scores.from_json(v) for k, v in metrics.get("others", {}).items()})
        found_baselines = {k: Scores.from_json(v) for k, v in metrics.get("baselines", {}).items()}
        rank = {k: Scores.from_json(v) for k, v in metrics.get("rank_classification", {}).items()}
        levels = dict(metrics.get("levels") or {})
        controls = {label: v for label, v in [*settings.items(), *metrics.get("baselines", {}).items()]
                    if v.get("control")}
        for key in ("model", "kind", "step", "collection", "split", "max_instances_per_task"):
            if metrics.get(key) is not None:
                extra_meta[key] = metrics[key]
        extra_meta["settings"] = ", ".join(settings) + f" (primary: {primary})"
        if "primary" in settings[primary]:
            extra_meta["mean of the categories' primary metrics"] = settings[primary]["primary"]
    else:
        scores = Scores.from_json(metrics)
        name = name or metrics.get("name")
        found_baselines = {k: Scores.from_json(v) for k, v in metrics.get("baselines", {}).items()}
        found_others = {k: Scores.from_json(v) for k, v in metrics.get("others", {}).items()}
        extra_meta = dict(metrics.get("meta", {}))
    return RunView(
        name=name or "model",
        scores=scores,
        baselines={**found_baselines, **dict(baselines or {})},
        others={**found_others, **dict(others or {})},
        meta={**extra_meta, **dict(meta or {})},
        rank_classification=rank,
        levels=levels,
        controls=controls,
        primary_setting=primary,
    )


def write_report(
    metrics: Scores | Mapping[str, Any],
    out_dir: str | Path,
    *,
    name: str | None = None,
    baselines: Mapping[str, Scores] | None = None,
    others: Mapping[str, Scores] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, report.md and categories.png into `out_dir` (each atomically); returns their paths.

    `metrics`: the model's `Scores` (then metrics.json holds them with the baselines', other runs' and
    `meta`), or an already-built metrics dict such as `mixtune eval run`'s, which is written unchanged.
    `baselines` / `others` (name -> Scores) go beside the model in every table and in the plot.
    """
    from mixtune.eval.schema import SCHEMA_VERSION, validate_metrics

    out = Path(out_dir)
    paths = {"metrics": out / METRICS_FILE, "report": out / REPORT_FILE, "plot": out / PLOT_FILE}
    built = isinstance(metrics, Mapping) and not (baselines or others or meta or name)
    if built:  # an already-built metrics dict: kept as it is (checked before anything reads it)
        metrics = validate_metrics({"schema_version": SCHEMA_VERSION, **metrics}, paths["metrics"])
    view = run_view(metrics, name=name, baselines=baselines, others=others, meta=meta)
    out.mkdir(parents=True, exist_ok=True)
    if built:
        payload = dict(metrics)
    else:
        payload = {
            "schema_version": SCHEMA_VERSION,
            "name": view.name,
            **view.scores.to_json(),
            "baselines": {k: v.to_json() for k, v in view.baselines.items()},
            "others": {k: v.to_json() for k, v in view.others.items()},
            "meta": view.meta,
        }
    validate_metrics(payload, paths["metrics"])
    atomic_write_json(paths["metrics"], payload, ensure_ascii=False)
    atomic_write_text(paths["report"], render_report(view.scores, name=view.name, baselines=view.baselines,
                                                     others=view.others, meta=view.meta,
                                                     rank_classification=view.rank_classification,
                                                     levels=view.levels, controls=view.controls,
                                                     primary_setting=view.primary_setting))
    chance = metrics.get("chance_exact_match") if isinstance(metrics, Mapping) else None
    atomic_write_bytes(paths["plot"], plot_categories(view.scores, name=view.name, baselines=view.baselines,
                                                      others=view.others, chance=chance))
    return paths


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of an evaluation output folder (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = json_loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("no metrics.json here", path=path,
                        hint="pass folders written by `mixtune eval run` (or containing metrics.json)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg}, line {e.lineno})", path=path) from None
    if not isinstance(data, dict) or "overall" not in data:
        raise DataError("not an evaluation metrics file: no 'overall' table", path=path, field="overall")
    from mixtune.eval.schema import validate_metrics

    return validate_metrics(data, path)


def _labels(dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(d).name or str(d) for d in dirs]
    labels = [str(d) if names.count(n) > 1 else n for n, d in zip(names, dirs, strict=True)]
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def compare(dirs: Sequence[str | Path], *, baselines: bool = False) -> str:
    """Side-by-side Markdown table of several evaluation folders: overall EM / ROUGE-L, then each category's
    primary metric, then the instance count. `baselines=True` adds the first folder's baselines as columns."""
    if not dirs:
        raise DataError("nothing to compare", hint="pass one or more evaluation output folders")
    views = [run_view(load_metrics(d)) for d in dirs]
    runs = {label: v.scores for label, v in zip(_labels(dirs), views, strict=True)}
    if baselines:
        labels = _labels(dirs)
        source = next((i for i, v in enumerate(views) if v.baselines), None)
        if source is None:
            raise DataError("--baselines: none of these folders holds baselines", path=dirs[0],
                            hint="evaluate with `mixtune eval run` without --no-baselines, or drop --baselines")
        of = "" if source == 0 else f" of {labels[source]}"  # the first folder has none: say whose they are
        for b, scores in views[source].baselines.items():
            runs[f"{b} (baseline{of})"] = scores
    cats: list[str] = []
    for s in runs.values():
        cats += [c for c in s.per_category if c not in cats]
    lines = ["| Metric |" + "".join(f" {r} |" for r in runs), "|---|" + "---:|" * len(runs)]
    for m in METRICS:
        lines.append(f"| overall {LABELS[m]} |" + "".join(f" {_fmt(s.overall.get(m))} |" for s in runs.values()))
    for c in cats:
        lines.append(f"| {c} ({LABELS[primary_metric(c)]}) |"
                     + "".join(f" {_fmt(_primary(s, c))} |" for s in runs.values()))
    lines.append("| instances |" + "".join(f" {s.num_instances.get('overall', '?')} |" for s in runs.values()))
    lines.append("| ROUGE tokenizer |" + "".join(f" {s.rouge_tokenizer} |" for s in runs.values()))
    return "\n".join(lines) + "\n"


def print_overall(run_dir: str | Path, file: Any = None) -> Path:
    """Print an evaluation folder's overall table (the model, the runs beside it, the baselines) and the
    sentence on the baselines, as report.md has them; returns the report's path."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mixtune.console import print_table

    view = run_view(load_metrics(run_dir))
    table = Table(title=escape(f"held-out, overall: {view.name}"), title_justify="left")
    for header, justify in (("run", "left"), ("EM", "right"), ("ROUGE-L", "right")):
        table.add_column(header, justify=justify)
    for label, s in {view.name: view.scores, **view.others, **view.baselines}.items():
        kind = " (baseline)" if label in view.baselines else ""
        table.add_row(escape(label + kind), _fmt(s.overall["exact_match"]), _fmt(s.overall["rougeL"]))
    console = Console(file=file, highlight=False)
    print_table(table, console)
    if view.baselines:
        console.print(escape(standing(view.name, view.scores, view.baselines)), soft_wrap=True)
    return Path(run_dir) / REPORT_FILE
