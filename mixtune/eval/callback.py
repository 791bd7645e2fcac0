"""Held-out evaluation during training: a TrainerCallback that evaluates every N steps and at the end.

Each evaluation writes a full `mixtune eval run` folder under `<output_dir>/heldout_eval/step-<N>/`,
logs `heldout/<setting>/<metric>` through the trainer (so the trainer's logs, console and wandb get
it), and keeps `<output_dir>/best_heldout_checkpoint.json` pointing at the step (and checkpoint
folder) with the best `metric_for_best` so far; the trainer state's best_global_step/best_metric are
set too, so the Trainer keeps that checkpoint out of save_total_limit's rotation. Every process takes part
(generation is split across processes, as ZeRO-3 requires); the main process writes the files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mixtune.eval.spec import EvalSpec
from mixtune.io import atomic_write_json

log = logging.getLogger(__name__)

EVAL_DIR = "heldout_eval"
BEST_FILE = "best_heldout_checkpoint.json"


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`heldout/<setting>/{exact_match,rougeL,primary}` (+ rank classification EM) for the trainer's log."""
    logs: dict[str, float] = {}
    for setting, scores in metrics.get("settings", {}).items():
        for name in ("exact_match", "rougeL"):
            logs[f"heldout/{setting}/{name}"] = scores["overall"][name]
        logs[f"heldout/{setting}/primary"] = scores["primary"]
    for setting, scores in metrics.get("rank_classification", {}).items():
        logs[f"heldout/{setting}/rank_exact_match"] = scores["overall"]["exact_match"]
    return logs


def best_value(metrics: dict[str, Any], metric: str) -> float:
    """The overall value of `metric` (rougeL | exact_match | primary) for the primary setting."""
    return float(metrics["primary"] if metric == "primary" else metrics["overall"][metric])


class HeldOutEvalCallback(TrainerCallback):
    """Run the held-out evaluation of `spec` every `spec.every_n_steps` steps and at the end of training.

    Args:
        spec: the recipe's `eval:` section.
        tokenizer: the training tokenizer (its padding side is left untouched).
        output_dir: where `heldout_eval/` and the best-checkpoint file go (default: TrainingArguments.output_dir).
        collection: an open task collection (default: opened from `spec`).
        trainer: the Trainer, to log through `trainer.log` (also settable later with `bind(trainer)`);
            without it metrics are appended to `state.log_history` and logged with `logging`.
        baselines_at_end: add the copy_demo / copy_input baselines to the final report.
        progress: show a status line and a progress bar for each evaluation (main process).
    """

    def __init__(self, spec: EvalSpec, tokenizer: Any, *, output_dir: str | Path | None = None,
                 collection: Any = None, trainer: Any = None, baselines_at_end: bool = True,
                 progress: bool = False) -> None:
        self.progress = progress
        self.spec = spec
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.collection = collection
        self.trainer = trainer
        self.baselines_at_end = baselines_at_end
        self.last_step: int | None = None
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def bind(self, trainer: Any) -> HeldOutEvalCallback:
        """Log through this trainer (`trainer.log`); returns self."""
        self.trainer = trainer
        return self

    # -- TrainerCallback events ------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.spec.at_start and state.global_step == 0:
            self.evaluate(args, state, kwargs["model"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.spec.every_n_steps
        if every and state.global_step > 0 and state.global_step % every == 0:
            self.evaluate(args, state, kwargs["model"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.last_step != state.global_step:
            self.evaluate(args, state, kwargs["model"], final=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.best is not None and state.is_world_process_zero:
            self._write_best(args)

    # -- evaluation ------------------------------------------------------------------------------
    def _root(self, args: Any) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir)

    def evaluate(self, args: Any, state: Any, model: Any, *, final: bool = False) -> dict[str, Any]:
        """Evaluate now (all processes); returns the flat logged metrics."""
        from mixtune.console import phase
        from mixtune.eval.runner import run_eval

        step = int(state.global_step)
        self.last_step = step
        if self.collection is None:
            from mixtune.eval.runner import _open_collection

            self.collection = _open_collection(self.spec)
        out = self._root(args) / EVAL_DIR / f"step-{step}"
        show = self.progress and state.is_world_process_zero
        with phase(f"held-out evaluation at step {step} ({', '.join(self.spec.settings)}) into {out}", enabled=show):
            metrics = run_eval(model, self.spec, out, tokenizer=self.tokenizer, collection=self.collection,
                               baselines=final and self.baselines_at_end, overwrite=True, progress=show,
                               step=step, others=self._initial_scores(args) if final else None)
        summary = _share(
            {"logs": flat_metrics(metrics), "value": best_value(metrics, self.spec.metric_for_best)}
            if metrics else None)
        logs, value = summary["logs"], summary["value"]
        self.history.append({"step": step, "value": value})
        if step > 0 and (self.best is None or value > self.best["value"]):  # step 0: no checkpoint to keep
            self.best = {"step": step, "value": value}
        if self.best is not None:
            # The Trainer then records checkpoint-<best step> as state.best_model_checkpoint when it saves,
            # and its checkpoint rotation (save_total_limit) never deletes that checkpoint.
            state.best_global_step, state.best_metric = self.best["step"], self.best["value"]
            if state.is_world_process_zero:
                self._write_best(args)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": step})
            if state.is_world_process_zero:
                log.info("held-out evaluation at step %d: %s", step, logs)
        return logs

    def _initial_scores(self, args: Any) -> dict[str, Any]:
        """The step-0 evaluation's score tables (`eval.at_start`), named for the report: 'before training [setting]'."""
        path = self._root(args) / EVAL_DIR / "step-0" / "metrics.json"
        if not self.spec.at_start or not path.is_file():
            return {}
        import json

        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        return {f"before training [{name}]": scores for name, scores in settings.items()}

    def _write_best(self, args: Any) -> None:
        assert self.best is not None
        root = self._root(args)
        checkpoint = Path(args.output_dir) / f"checkpoint-{self.best['step']}"
        atomic_write_json(root / BEST_FILE, {
            "metric": self.spec.metric_for_best,
            "setting": self.spec.settings[0],
            "step": self.best["step"],
            "value": self.best["value"],
            "checkpoint": str(checkpoint),
            "checkpoint_saved": checkpoint.is_dir(),
            "eval_dir": str(root / EVAL_DIR / f"step-{self.best['step']}"),
            "history": self.history,
        })


def _share(obj: Any) -> Any:
    """The main process's `obj` on every process (a no-op in a single process)."""
    from mixtune.eval.sharding import process_state

    state = process_state()
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
