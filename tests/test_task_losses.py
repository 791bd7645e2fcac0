"""Training loss per task, category and source (`losses.jsonl`): reconciled with the overall loss and the
Trainer's, the same with packing and on two processes, from the training forward's own logits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RECIPE, trainer_logged_losses

from mixtune.recipe import load_recipe
from mixtune.train.collators import IGNORE_INDEX, CompletionOnlyCollator
from mixtune.train.packing import PackingCollator
from mixtune.train.run import run_training
from mixtune.train.task_losses import TaskLossCallback, read_losses, token_task_ids, trained_token_losses

# global batch 8 = 4 per device x 2 accumulation (one process) = 2 x 2 x 2 (two processes)
SETTINGS = ["data.max_length=64", "training.max_steps=2", "training.save_steps=2", "training.logging_steps=1",
            "training.gradient_accumulation_steps=2"]
TOL = 1e-4


def _check_line(line: dict) -> None:
    """Every table's token-weighted mean is the line's loss and its tokens add up to the line's tokens."""
    assert set(line) == {"step", "loss", "tokens", "per_task", "per_category", "per_source"}
    for table in ("per_task", "per_category", "per_source"):
        rows = line[table].values()
        assert sum(r["tokens"] for r in rows) == line["tokens"] > 0
        mean = sum(r["loss"] * r["tokens"] for r in rows) / line["tokens"]
        assert abs(mean - line["loss"]) < TOL
    assert len(line["per_task"]) >= len(line["per_category"]) >= 1


def _check_run(out: Path, steps: int = 2) -> list[dict]:
    lines = read_losses(out)
    assert [x["step"] for x in lines] == list(range(1, steps + 1))
    logged = trainer_logged_losses(out)
    for line in lines:
        _check_line(line)
        assert abs(line["loss"] - logged[line["step"]]) < TOL  # logging_steps=1: the same tokens averaged
    return lines


def _same_tables(a: dict, b: dict) -> None:
    for table in ("per_task", "per_category", "per_source"):
        assert a[table].keys() == b[table].keys()
        for name in a[table]:
            assert a[table][name]["tokens"] == b[table][name]["tokens"]
            assert abs(a[table][name]["loss"] - b[table][name]["loss"]) < TOL, (table, name)


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny recipe for 2 steps on one process, unpacked and packed (same seed, same examples)."""
    root = tmp_path_factory.mktemp("task-losses")
    outs = {}
    for name, extra in {"plain": [], "packed": ["data.packing=true"]}.items():
        outs[name] = root / name
        run_training(load_recipe(TINY_RECIPE, [*SETTINGS, "training.per_device_batch_size=4", *extra,
                                        f"output_dir={outs[name]}"]))
    return outs


@pytest.mark.integration
def test_losses_reconcile_with_the_trainer_unpacked_and_packed(one_process_runs: dict[str, Path]) -> None:
    """Each line reconciles (1e-4) and equals the Trainer's logged loss; before the first update the packed
    run's per-task losses are the unpacked run's, so packed tokens are credited to their own tasks."""
    plain, packed = _check_run(one_process_runs["plain"]), _check_run(one_process_runs["packed"])
    assert plain[0]["tokens"] == packed[0]["tokens"]
    _same_tables(plain[0], packed[0])
    assert len(plain[0]["per_task"]) > 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_processes_reduce_the_per_task_losses(tmp_path: Path, one_process_runs: dict[str, Path]) -> None:
    """`accelerate launch` on two processes (DeepSpeed ZeRO-2, gloo on CPU), packed: the lines reconcile, match the
    Trainer's loss, and step 1 (same examples, same initial weights) equals the one-process run's tables."""
    out = tmp_path / "two"
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--use_deepspeed",
           "--zero_stage", "2", "--main_process_port", str(_port()), "-m", "mixtune", "train", str(TINY_RECIPE),
           *SETTINGS, "training.per_device_batch_size=2", "data.packing=true", f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    lines = _check_run(out)
    _same_tables(lines[0], read_losses(one_process_runs["packed"])[0])


def test_packed_tokens_carry_their_examples_task(tiny_llama_dir: Path) -> None:
    """A packing layout maps each example's trained tokens to its task; the per-token losses of the trained
    tokens average to the model's own loss on the batch (from the same logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    examples = [{"prompt": f"Question {i}: add {i} and {i}.", "completion": " the answer is " + "x " * (i + 1)}
                for i in range(5)]
    tasks = [7, 3, 7, 1, 3]
    packing = PackingCollator(tokenizer, max_length=48)
    batch = packing(examples)
    assert len(packing.last_layout) < len(examples)  # several examples share a row
    ids = token_task_ids(batch["labels"], tasks, packing.last_layout)
    assert torch.equal(ids >= 0, batch["labels"] != IGNORE_INDEX)
    single = CompletionOnlyCollator(tokenizer, max_length=48)
    trained = [sum(label != IGNORE_INDEX for label in e["labels"]) for e in single.tokenize(examples)]
    for task in set(tasks):  # each example's trained tokens, and no others, carry its task
        assert int((ids == task).sum()) == sum(n for n, t in zip(trained, tasks, strict=True) if t == task)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"])
    losses, per_token_tasks = trained_token_losses(out.logits, batch["labels"], ids, shift=True)
    assert abs(float(losses.mean()) - float(out.loss)) < 1e-5
    assert sorted(set(per_token_tasks.tolist())) == [1, 3, 7]


def test_a_resumed_run_drops_lines_after_its_checkpoint(tmp_path: Path) -> None:
    """Lines an interrupted attempt wrote after the checkpoint it resumes from are removed at train begin."""
    from types import SimpleNamespace

    plan = SimpleNamespace(tasks=[SimpleNamespace(name="t", category="c", source="s")])
    callback = TaskLossCallback(plan, tmp_path, start_step=2)
    (tmp_path / "losses.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    assert [x["step"] for x in read_losses(tmp_path)] == [1, 2]
    line = callback.line(3, [6.0], [3.0])
    assert line == {"step": 3, "loss": 2.0, "tokens": 3, "per_task": {"t": {"loss": 2.0, "tokens": 3}},
                    "per_category": {"c": {"loss": 2.0, "tokens": 3}}, "per_source": {"s": {"loss": 2.0, "tokens": 3}}}
    assert callback.line(4, [float("nan")], [3.0])["per_task"] == {"t": {"loss": None, "tokens": 3}}


@pytest.mark.integration
def test_seq2seq_losses_reconcile_with_the_trainer(tmp_path: Path) -> None:
    """Encoder-decoder labels are not shifted, and T5's own loss (a micro-batch mean that ignores
    num_items_in_batch) is replaced by the token-weighted one: with gradient accumulation the lines still
    equal the Seq2SeqTrainer's logged loss."""
    out = tmp_path / "t5"
    run_training(load_recipe(REPO / "recipes" / "tiny_seq2seq.yaml",
                             [*SETTINGS, "training.per_device_batch_size=2", "data.max_source_length=48",
                              f"output_dir={out}"]))
    _check_run(out)


@pytest.mark.integration
def test_seq2seq_accumulation_trains_as_one_batch(tmp_path: Path) -> None:
    """T5 on 2 micro-batches of 2 accumulated equals T5 on one batch of 4 (same examples, no dropout): the
    same logged loss and the same weights after two steps. Before the fix the accumulated run logged about
    twice the loss and took gradients twice as large (clipped differently)."""
    from safetensors.torch import load_file

    runs = {}
    for name, (batch, accumulation) in {"accumulated": (2, 2), "one_batch": (4, 1)}.items():
        runs[name] = tmp_path / name
        run_training(load_recipe(REPO / "recipes" / "tiny_seq2seq.yaml",
                                 [*SETTINGS, f"training.per_device_batch_size={batch}",
                                  f"training.gradient_accumulation_steps={accumulation}",
                                  "model.config.dropout_rate=0.0", "data.max_source_length=48",
                                  "training.max_grad_norm=0.5", f"output_dir={runs[name]}"]))
    losses = {name: trainer_logged_losses(out) for name, out in runs.items()}
    assert losses["accumulated"].keys() == losses["one_batch"].keys() == {1, 2}
    for step in (1, 2):
        assert abs(losses["accumulated"][step] - losses["one_batch"][step]) < TOL
    weights = {name: load_file(next(out.glob("checkpoint-2")) / "model.safetensors") for name, out in runs.items()}
    for key, value in weights["one_batch"].items():
        assert torch.allclose(weights["accumulated"][key], value, atol=1e-5), key


@pytest.mark.integration
def test_the_run_writes_a_training_report_and_mixtune_report_redraws_it(one_process_runs: dict[str, Path],
                                                                         tmp_path: Path, capsys) -> None:
    """training_report.md beside heldout_eval/: the loss plot, per task planned/seen examples (adding up to the
    trained examples) and tokens (adding up to losses.jsonl's); `mixtune report` writes the same file."""
    from mixtune.cli import main

    run = one_process_runs["plain"]
    text = (run / "training_report.md").read_text()
    assert (run / "loss_per_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training loss per category](loss_per_category.png)" in text
    rows = [r.split("|") for r in text.split("## Examples and tokens per task")[1].split("##")[0].splitlines()
            if r.startswith("| ") and not r.startswith("| task | planned") and "---" not in r]
    planned, seen, tokens = (sum(float(r[k].replace(",", "")) for r in rows) for k in (2, 3, 4))
    assert abs(planned - 16) <= 0.05 * len(rows) + 1e-6 and seen == 16  # 2 steps x global batch 8 (rounded to .1)
    assert tokens == sum(line["tokens"] for line in read_losses(run))
    (run / "training_report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "training_report.md").read_text() == text
    assert main(["report", str(tmp_path)]) == 2
    assert "mixtune: error:" in capsys.readouterr().err


def test_trained_task_counts_add_up_when_a_task_comes_from_two_sources(repo_root: Path) -> None:
    """The quickstart mixture takes every task twice (two encodings): the counts per task name add both."""
    from mixtune.mixtures import load_mixture, plan_mixture
    from mixtune.train.run import trained_task_counts

    plan = plan_mixture(load_mixture(repo_root / "data_mixtures" / "quickstart.yaml"))
    assert len({t.name for t in plan.tasks}) < len(plan.tasks)
    assert sum(trained_task_counts(plan, len(plan) + 10).values()) == len(plan) + 10
