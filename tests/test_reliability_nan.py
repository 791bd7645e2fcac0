"""A step whose loss turns NaN/inf: the guard stops (naming the step and the batch's tasks) or skips it,
and the weights never take a non-finite update. Real tiny Llama, real mixture stream, real Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE
from transformers import TrainerCallback

from mixtune.train.nan_guard import NanGuardCallback, NonFiniteLossError

POISONED_STEP = 3
STEPS = 5


class _Poison(TrainerCallback):
    """Make the model's embeddings NaN during one optimizer step (as a bad batch or an overflow would)."""

    def __init__(self, model: torch.nn.Module, step: int) -> None:
        self.step = step
        self.active = False
        model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output * float("nan") if self.active else output)

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.active = state.global_step + 1 == self.step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.active = False


def _train(tmp_path: Path, policy: str | None) -> tuple[torch.nn.Module, NanGuardCallback | None, object, int]:
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.recipe import load_recipe
    from mixtune.train.data import PositionStream, StreamCollator, global_batch_size
    from mixtune.train.run import plan_for
    from mixtune.train.trainer import build_collator, build_trainer, build_training_arguments

    recipe = load_recipe(TINY_RECIPE, [
        f"output_dir={tmp_path / 'run'}", "training.save_steps=1000", "training.logging_steps=1",
        "training.on_nan=skip", "training.per_device_batch_size=2", "data.max_length=64",
        "data.max_source_length=48"])
    plan = plan_for(recipe)
    model, tokenizer, kind = load_model_and_tokenizer(recipe.model)
    args = build_training_arguments(recipe, max_steps=STEPS, kind=kind)
    g_batch = global_batch_size(2, 1, 1)
    callbacks: list = [_Poison(model, POISONED_STEP)]
    guard = None
    if policy is not None:
        guard = NanGuardCallback(plan, policy=policy, global_batch_size=g_batch)
        callbacks.append(guard)
    collator = StreamCollator(plan, build_collator(recipe, model, tokenizer, kind), tokenizer=tokenizer,
                              max_source_length=48)
    trainer = build_trainer(model=model, tokenizer=tokenizer, kind=kind, args=args,
                            train_dataset=PositionStream(0, STEPS * g_batch), data_collator=collator,
                            callbacks=callbacks)
    return model, guard, trainer, g_batch


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.integration
def test_stop_names_step_and_tasks_before_the_update(tmp_path: Path) -> None:
    model, guard, trainer, g_batch = _train(tmp_path, "stop")
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    text = str(err.value)
    assert f"step {POISONED_STEP}" in text and "training.on_nan" in text
    lo = (POISONED_STEP - 1) * g_batch
    plan = guard.plan
    expected = {plan.tasks[int(plan.index.task_ids[p])].name for p in range(lo, lo + g_batch)}
    for task in expected:
        assert task in text
    assert trainer.state.global_step == POISONED_STEP - 1
    assert _finite(model)


@pytest.mark.integration
def test_skip_drops_the_step_and_training_goes_on(tmp_path: Path) -> None:
    model, guard, trainer, _ = _train(tmp_path, "skip")
    trainer.train()
    assert guard.skipped == [POISONED_STEP]
    assert trainer.state.global_step == STEPS
    assert _finite(model)


@pytest.mark.integration
def test_without_the_guard_the_weights_are_ruined(tmp_path: Path) -> None:
    """The control: the same poisoned step, unguarded, corrupts the model (so the tests above can fail)."""
    model, _, trainer, _ = _train(tmp_path, None)
    trainer.train()
    assert not _finite(model)


@pytest.mark.integration
def test_too_many_skips_in_a_row_stop(tmp_path: Path) -> None:
    model, guard, trainer, _ = _train(tmp_path, "skip")
    guard.max_consecutive_skips = 0
    with pytest.raises(NonFiniteLossError, match="in a row"):
        trainer.train()
    assert _finite(model)


DIVERGE = ["training.learning_rate=1e30", "training.warmup_ratio=0", "training.max_steps=4",
           "training.save_steps=1000", "training.per_device_batch_size=2", "data.max_length=64",
           "data.max_source_length=48"]


def test_mixtune_train_stops_on_divergence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """End to end: a learning rate of 1e30 makes step 2's loss non-finite; `mixtune train` stops there."""
    from mixtune.cli import main

    out = tmp_path / "run"
    assert main(["train", str(TINY_RECIPE), f"output_dir={out}", *DIVERGE]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at step 2" in err and "training.on_nan" in err and "the batch's tasks" in err
    assert not (out / "final").exists()


@pytest.mark.integration
def test_mixtune_train_skips_on_divergence(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from mixtune.cli import main

    out = tmp_path / "run"
    assert main(["train", str(TINY_RECIPE), f"output_dir={out}", *DIVERGE,
                 "training.on_nan=skip"]) == 0
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert "step skipped" in (out / "train.log").read_text()
