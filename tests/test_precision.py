"""training.precision: mixed precision over fp32 master weights, and fp16 loss-scaler overflows told apart
from divergence. Real tiny Llama, real Trainer, torch's CPU autocast and CPU GradScaler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE
from safetensors.torch import load_file

from mixtune.errors import ConfigError
from mixtune.recipe import load_recipe
from mixtune.train.nan_guard import NanGuardCallback, NonFiniteLossError


def _trainer(tmp_path: Path, precision: str):
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.train.data import PositionStream, StreamCollator
    from mixtune.train.run import plan_for
    from mixtune.train.trainer import build_collator, build_trainer, build_training_arguments

    recipe = load_recipe(TINY_RECIPE, [f"output_dir={tmp_path / 'run'}", f"training.precision={precision}",
                                "training.per_device_batch_size=2", "data.max_length=64", "logging.wandb=disabled"])
    plan = plan_for(recipe)
    torch.manual_seed(0)
    model, tokenizer, kind = load_model_and_tokenizer(recipe.model)
    args = build_training_arguments(recipe, max_steps=2, kind=kind)
    trainer = build_trainer(model=model, tokenizer=tokenizer, kind=kind, args=args, train_dataset=PositionStream(0, 4),
                            data_collator=StreamCollator(plan, build_collator(recipe, model, tokenizer, kind)),
                            callbacks=[])
    return trainer, model


@pytest.mark.integration
def test_bf16_autocasts_over_fp32_master_weights(tmp_path) -> None:
    trainer, model = _trainer(tmp_path, "bf16")
    assert trainer.args.bf16 and not trainer.args.fp16
    seen: list[torch.dtype] = []
    layer = model.model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls ran in bf16 ...
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # ... over fp32 weights
    trainer.save_model(str(tmp_path / "saved"))
    assert {t.dtype for t in load_file(str(tmp_path / "saved" / "model.safetensors")).values()} == {torch.float32}


@pytest.mark.integration
def test_fp16_precision_trains_on_cpu(tmp_path) -> None:
    """fp16 on CPU: accelerate runs it without a scaler (no CPU fp16 AMP there); weights stay fp32."""
    trainer, model = _trainer(tmp_path, "fp16")
    assert trainer.args.fp16
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def _guard_setup():
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig
    from mixtune.train.run import plan_for

    plan = plan_for(load_recipe(TINY_RECIPE, ["output_dir=unused"]))
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config={
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2}))
    ids = torch.tensor([tok("Paris is the capital of France")["input_ids"]])
    args = TrainingArguments("unused", use_cpu=True, report_to=[])
    Accelerator(cpu=True)  # the state AcceleratedOptimizer (the Trainer's optimizer wrapper) reads
    return plan, model, ids, args, TrainerState(), TrainerControl(), AcceleratedOptimizer


def _scaled_backward(model, ids, scaler, *, nan: bool = False) -> None:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss * float("nan") if nan else loss).backward()


def test_loss_scaler_overflow_is_skipped_not_reported_as_nan() -> None:
    plan, model, ids, args, state, control, wrap = _guard_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # forces an overflow
    optimizer = wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), device_placement=False, scaler=scaler)
    guard = NanGuardCallback(plan, policy="stop", global_batch_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _scaled_backward(model, ids, scaler)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    guard.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)  # no error
    optimizer.step()
    assert guard.overflow_skips == [1] and optimizer.step_was_skipped
    assert scaler.get_scale() < 2.0 ** 120  # the scaler lowered its scale
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the update was skipped
    # the same gradients without a loss scaler are a real NaN/inf: the stop policy stops
    plain = wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), device_placement=False)
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 1"):
        NanGuardCallback(plan, policy="stop", global_batch_size=2).on_pre_optimizer_step(
            args, state, control, model=model, optimizer=plain)


def test_overflow_after_overflow_is_divergence() -> None:
    plan, model, ids, args, state, control, wrap = _guard_setup()
    scaler = torch.amp.GradScaler("cpu")
    optimizer = wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), device_placement=False, scaler=scaler)
    guard = NanGuardCallback(plan, policy="skip", global_batch_size=2, max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match="overflows in a row"):
        for step in range(5):
            state.global_step = step
            _scaled_backward(model, ids, scaler, nan=True)  # a NaN loss: every scale overflows
            guard.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)
            optimizer.step()
    assert guard.overflow_skips == [1, 2, 3]


@pytest.mark.parametrize(("overrides", "field"), [
    (["model.dtype=bf16"], "model.dtype"),  # full fine-tuning of bf16 weights: no fp32 master copy
    (["model.dtype=fp16", "training.precision=fp16"], "model.dtype"),
    (["model.dtype=bf16", "distributed.deepspeed=zero2", "training.precision=fp32"], "training.precision"),
])
def test_storage_dtype_and_precision_must_agree(overrides, field) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY_RECIPE, overrides)
    assert e.value.field == field and "tiny_causal.yaml" in e.value.render()
    load_recipe(TINY_RECIPE,
                ["model.dtype=bf16", "training.precision=bf16", "model.lora.r=4"])  # a bf16 LoRA base is fine


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_presets_follow_training_precision(precision, tmp_path) -> None:
    from mixtune.train.trainer import build_training_arguments

    recipe = load_recipe(TINY_RECIPE, ["distributed.deepspeed=zero2", f"training.precision={precision}",
                                f"output_dir={tmp_path}"])
    config = build_training_arguments(recipe, max_steps=2, kind="causal").hf_deepspeed_config.config
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (precision == "bf16", precision == "fp16")
