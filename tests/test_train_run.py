"""Whole training runs: ZeRO-3 on two processes, seq2seq loss going down, LoRA final save, outputs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RECIPE, trainer_logged_losses

from mixtune.errors import HeldOutError
from mixtune.recipe import load_recipe
from mixtune.train.run import run_training

TINY_T5 = REPO / "recipes" / "tiny_seq2seq.yaml"
FAST = ["training.per_device_batch_size=2", "data.max_length=64", "data.max_source_length=48"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero3_run(out: Path, *extra: str) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", "2", "--use_deepspeed", "--zero_stage", "3",
           "--main_process_port", str(_free_port()), "-m", "mixtune", "train", str(TINY_RECIPE), *FAST,
           "training.max_steps=4", "training.save_steps=2", f"output_dir={out}", *extra]
    # timeout: the first DeepSpeed run on a machine compiles its shared-memory communication op
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]


@pytest.mark.integration
def test_zero3_two_processes_train_save_a_loadable_model_and_resume_exactly(tmp_path: Path) -> None:
    """`accelerate launch --use_deepspeed --zero_stage 3` (gloo on CPU): shards gathered into final/, and a
    run resumed from the step-2 checkpoint ends with the same parameters as the uninterrupted run."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    _zero3_run(out)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "COMPLETE").is_file()
    assert (checkpoint / "global_step2").is_dir()  # DeepSpeed's partitioned optimizer state
    state = json.loads((checkpoint / "mixtune_state.json").read_text())
    assert state == {**state, "global_step": 2, "position": 8, "world_size": 2, "global_batch_size": 4}

    final = out / "final"
    run = json.loads((final / "mixtune_run.json").read_text())
    assert run["zero_stage"] == 3 and run["world_size"] == 2 and run["trained_examples"] == 16
    assert sum(run["trained_task_counts"].values()) == 16
    assert run["mixture_hash"] == run["mixture"]["hash"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    hidden = run["recipe"]["model"]["config"]["hidden_size"]
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), hidden)  # gathered, not a shard
    assert float(model.get_input_embeddings().weight.detach().abs().sum()) > 0

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    _zero3_run(resumed)
    assert "resuming from" in (resumed / "train.log").read_text()
    a, b = load_file(str(final / "model.safetensors")), load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_seq2seq_loss_goes_down_on_a_fixed_batch(tmp_path: Path) -> None:
    """A one-batch mixture repeats every step: a tiny T5 learns it with Seq2SeqTrainer."""
    from transformers import AutoModelForSeq2SeqLM

    recipe = load_recipe(TINY_T5, [
        "data.mixture.total_examples=2", "training.per_device_batch_size=2", "training.max_steps=15",
        "training.learning_rate=1e-2", "training.logging_steps=1", "training.save_steps=100",
        "data.max_source_length=48", "data.max_target_length=16", f"output_dir={tmp_path / 'run'}"])
    final = run_training(recipe)
    losses = list(trainer_logged_losses(tmp_path / "run").values())
    assert len(losses) >= 15
    assert losses[-1] < 0.7 * losses[0], losses
    model = AutoModelForSeq2SeqLM.from_pretrained(final)
    assert model.config.is_encoder_decoder
    assert json.loads((final / "mixtune_run.json").read_text())["kind"] == "seq2seq"


@pytest.mark.integration
def test_lora_run_saves_merged_model_and_adapter_and_logs_to_wandb_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("WANDB_MODE", "disabled")  # restored after the test; the run switches it to offline
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    recipe = load_recipe(TINY_RECIPE, [*FAST, "model.lora.r=4", "training.max_steps=2", "training.save_steps=2",
                                "logging.wandb=offline", f"output_dir={tmp_path / 'run'}"])
    final = run_training(recipe)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # no account, no network
    info_hash = json.loads((final / "mixtune_run.json").read_text())["mixture_hash"]
    deadline = time.time() + 30  # wandb's service process may still be flushing the offline run file
    while info_hash.encode() not in runs[0].read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    assert info_hash.encode() in runs[0].read_bytes()  # the mixture hash is in the wandb run config
    while b"loss_by_category/" not in runs[0].read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    assert b"loss_by_category/" in runs[0].read_bytes() and b"loss_by_task/task" in runs[0].read_bytes()
    assert (final / "adapter" / "adapter_config.json").is_file()
    info = json.loads((final / "mixtune_run.json").read_text())
    assert info["lora"]["merged"] is True
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (tmp_path / "run" / "checkpoint-2" / "COMPLETE").is_file()


@pytest.mark.integration
def test_packing_and_chat_template_runs_save_loadable_models(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name, extra in {"packed": ["data.packing=true"], "chat": ["model.chat_template=default"]}.items():
        recipe = load_recipe(TINY_RECIPE, [*FAST, *extra, "training.max_steps=2", "training.save_steps=2",
                                    "training.logging_steps=1", f"output_dir={tmp_path / name}"])
        final = run_training(recipe)
        losses = list(trainer_logged_losses(tmp_path / name).values())
        assert len(losses) == 2 and all(0 < x < 20 for x in losses)
        tokenizer = AutoTokenizer.from_pretrained(final)
        model = AutoModelForCausalLM.from_pretrained(final)
        assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert "<|im_end|>" in AutoTokenizer.from_pretrained(tmp_path / "chat" / "final").get_vocab()


def test_training_refuses_held_out_tasks(tmp_path: Path) -> None:
    """Every task of the sample (its held-out test tasks included) -> the mixture's guard stops the run."""
    recipe = load_recipe(TINY_RECIPE, ["data.mixture.sources=[{name: all, path: bundled}]",
                                f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(HeldOutError):
        run_training(recipe)
    assert not (tmp_path / "run" / "final").exists()


def test_resume_refuses_a_changed_mixture(tmp_path: Path) -> None:
    from mixtune.errors import ConfigError
    from mixtune.train.checkpoint import StreamState, mark_complete

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    mark_complete(out / "checkpoint-2", StreamState(global_step=2, position=8, mixture_hash="other",
                                                    global_batch_size=4, world_size=1))
    with pytest.raises(ConfigError, match="mixture changed"):
        run_training(load_recipe(TINY_RECIPE, [f"output_dir={out}"]))


@pytest.mark.integration
def test_dataloader_workers_train_on_the_same_batches(tmp_path: Path) -> None:
    """data.num_workers=2 feeds the trainer the same micro-batches, in the same order, as the main process."""
    logs, steps = [], []
    for workers in (0, 2):
        log, out = tmp_path / f"order{workers}.jsonl", tmp_path / str(workers)
        recipe = load_recipe(TINY_RECIPE, [*FAST, "training.max_steps=3", "training.save_steps=100",
                                    "training.logging_steps=1", f"data.num_workers={workers}", f"output_dir={out}"])
        run_training(recipe, order_log=log)
        # workers append to the order log as they collate (ahead of the trainer, in any order between them)
        logs.append(sorted(json.loads(line)["positions"] for line in log.read_text().splitlines()))
        # what the trainer consumed, step by step: each step's loss and tasks (losses.jsonl)
        lines = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
        steps.append([(r["step"], round(r["loss"], 5), sorted(r["per_task"])) for r in lines])
    assert logs[0] == logs[1] == [[0, 1], [2, 3], [4, 5]]
    assert steps[0] == steps[1] and [s for s, _, _ in steps[0]] == [1, 2, 3]
