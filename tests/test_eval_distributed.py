"""Two-process evaluation (accelerate launch, gloo on CPU): gathered predictions equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_LLAMA

from mixtune.eval.runner import run_eval
from mixtune.eval.spec import EvalSpec

# 3 tasks x 3 instances = 9 prompts: an uneven split over 2 processes (5 + 4, the short share padded)
SPEC = {"tasks": ["task199_mnli_classification", "task1390_wscfixed_coreference", "task288_gigaword_summarization"],
        "max_instances_per_task": 3, "settings": ["zero_shot"], "max_new_tokens": 6, "batch_size": 2,
        "max_source_length": 160, "rank_classification": True}

WORKER = textwrap.dedent("""
    import json, sys
    from mixtune.eval.generation import generate
    from mixtune.eval.sharding import process_state
    from mixtune.eval.runner import run_eval
    from mixtune.eval.spec import EvalSpec
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    model_dir, out_dir, spec_json, prompts_json = sys.argv[1:5]
    state = process_state()
    assert state.num_processes == 2, state
    model, tokenizer, kind = load_model_and_tokenizer(ModelConfig(name_or_path=model_dir))
    metrics = run_eval(model, EvalSpec(**json.loads(spec_json)), out_dir, tokenizer=tokenizer, baselines=False,
                       progress=False)
    assert bool(metrics) == state.is_main_process
    prompts = json.loads(prompts_json)
    texts = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=5, progress=False)
    with open(f"{out_dir}/generate.rank{state.process_index}.json", "w") as f:
        json.dump(texts, f)
    from mixtune.distributed import shutdown

    shutdown()  # as `mixtune` does at the end of a command: leave the process group before exiting
""")


@pytest.mark.integration
def test_two_process_evaluation_equals_single_process(tiny_llama_dir, tmp_path):
    from mixtune.eval.generation import generate
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    prompts = [f"Input: {'word ' * (i * 5 % 17)}item {i}.\nOutput: " for i in range(7)]  # 7: uneven again
    single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)))
    single = run_eval(model, EvalSpec(**SPEC), single_dir, tokenizer=tokenizer, baselines=False, progress=False)

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), str(tiny_llama_dir), str(multi_dir), json.dumps(SPEC), json.dumps(prompts)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]

    def lines(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines()]

    assert lines(multi_dir / "predictions.jsonl") == lines(single_dir / "predictions.jsonl")
    assert len(lines(multi_dir / "predictions.jsonl")) == 9
    assert lines(multi_dir / "rank_classification.zero_shot.jsonl") == lines(
        single_dir / "rank_classification.zero_shot.jsonl")
    multi = json.loads((multi_dir / "metrics.json").read_text())
    for key in ("overall", "per_category", "per_task", "rank_classification"):
        assert multi[key] == single[key]

    expected = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=5, progress=False,
                        distributed=False)
    for rank in (0, 1):  # every process gets the full, ordered list
        assert json.loads((multi_dir / f"generate.rank{rank}.json").read_text()) == expected


KILLED_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    from mixtune.eval import runner
    from mixtune.eval.sharding import process_state
    from mixtune.eval.spec import EvalSpec
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    model_dir, out_dir, spec_json = sys.argv[1:4]
    state = process_state()
    written = runner._PartialWriter.__call__

    def write_then_die(self, indices, texts):  # each rank is killed once both ranks' first batches are written
        written(self, indices, texts)
        partial = os.path.join(out_dir, runner.PARTIAL_DIR)
        other = os.path.join(partial, f"predictions.zero_shot.rank{1 - state.process_index}.jsonl")
        deadline = time.monotonic() + 120  # a busy machine may start the other rank late
        while time.monotonic() < deadline and not (os.path.exists(other) and os.path.getsize(other)):
            time.sleep(0.05)  # the launcher stops every rank once one dies: wait for the other's batch
        os.kill(os.getpid(), signal.SIGKILL)

    runner._PartialWriter.__call__ = write_then_die
    model, tokenizer, kind = load_model_and_tokenizer(ModelConfig(name_or_path=model_dir))
    runner.run_eval(model, EvalSpec(**json.loads(spec_json)), out_dir, tokenizer=tokenizer, baselines=False,
                    progress=False)
""")


def _launch(script: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_two_process_evaluation_killed_and_resumed_equals_one_process(tiny_llama_dir, tmp_path):
    """Both ranks SIGKILLed mid-run; a two-process rerun (the main process decides what is left and
    broadcasts it) finishes with exactly the one-process predictions."""
    from mixtune.eval.runner import PARTIAL_DIR
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    spec = {**SPEC, "max_instances_per_task": 5}  # 15 prompts
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)))
    single = run_eval(model, EvalSpec(**spec), tmp_path / "single", tokenizer=tokenizer, baselines=False,
                      progress=False)
    out = tmp_path / "multi"
    (tmp_path / "killed.py").write_text(KILLED_WORKER)
    killed = _launch(tmp_path / "killed.py", str(tiny_llama_dir), str(out), json.dumps(spec))
    assert killed.returncode != 0
    partial = {p.name: len(p.read_text().splitlines()) for p in (out / PARTIAL_DIR).glob("*.jsonl")}
    assert partial == {"predictions.zero_shot.rank0.jsonl": 2, "predictions.zero_shot.rank1.jsonl": 2}
    assert not (out / "predictions.jsonl").exists()

    # a slow reader on rank 1 (its file system lags): a rank that read the folder itself would see rank 0's
    # new lines and skip other prompts than rank 0 -- the main process's decision is the only one used
    slow_rank1 = WORKER.replace("state = process_state()\n", textwrap.dedent("""\
        state = process_state()
        import time
        from mixtune.eval import runner
        if state.process_index == 1:
            reader = runner.existing_predictions
            runner.existing_predictions = lambda *a, **k: (time.sleep(4), reader(*a, **k))[1]
        """))
    assert slow_rank1 != WORKER
    (tmp_path / "worker.py").write_text(slow_rank1)
    prompts = ["Input: x.\nOutput: "]
    resumed = _launch(tmp_path / "worker.py", str(tiny_llama_dir), str(out), json.dumps(spec), json.dumps(prompts))
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    def lines(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines()]

    assert lines(out / "predictions.jsonl") == lines(tmp_path / "single" / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["settings"]["zero_shot"]["reused"], metrics["settings"]["zero_shot"]["generated"]) == (4, 11)
    assert metrics["per_task"] == single["per_task"]
    assert not (out / PARTIAL_DIR).exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_failure_on_the_main_process_ends_both_ranks_with_one_error(tiny_llama_dir, tmp_path):
    """The output folder holds another evaluation: the check fails on the main process only. Two ranks
    started as a cluster scheduler starts them (no launcher that kills the survivors): both stop with the
    same error, printed once, and no rank is left waiting at a barrier."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": {"max_new_tokens": 999}}))
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2"}
        cmd = [sys.executable, "-m", "mixtune", "eval", "run", str(tiny_llama_dir), "--out", str(out), "--tasks",
               "task199_mnli_classification", "--max-instances", "2", "--max-new-tokens", "2", "--no-baselines"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=150))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [p.returncode for p in procs] == [2, 2], [err[-2000:] for _, err in results]
    errors = [x for _, err in results for x in err.splitlines() if x.startswith("mixtune: error:")]
    assert len(errors) == 1 and "holds predictions of a different evaluation" in errors[0], results
    assert "--overwrite" in errors[0]


ZERO3_WORKER = textwrap.dedent("""
    import json, sys
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import Trainer, TrainingArguments
    from mixtune.eval.callback import HeldOutEvalCallback
    from mixtune.eval.spec import EvalSpec
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    out, spec_json, llama_json = sys.argv[1:4]
    ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto",
          "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}
    args = TrainingArguments(output_dir=out, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             deepspeed=ds)
    _ = args.device  # opens the process group (gloo); DeepSpeed's comm layer wraps it
    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=json.loads(llama_json)))
    ids = tokenizer("Definition: say yes. Output: yes")["input_ids"]
    callback = HeldOutEvalCallback(EvalSpec(**json.loads(spec_json)), tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": ids, "labels": ids}] * 8,
                      callbacks=[callback])
    callback.bind(trainer)
    trainer.train()  # training goes on after each evaluation: parameters gathered for it stay trainable
    logged = [h for h in trainer.state.log_history if "heldout/zero_shot/rougeL" in h]
    with open(f"{out}/logged.rank{args.process_index}.json", "w") as f:
        json.dump(logged, f)
""")


@pytest.mark.integration
def test_periodic_evaluation_under_zero3_two_processes(tmp_path):
    """The training callback under DeepSpeed ZeRO-3 (sharded parameters, 2 processes): every process
    takes part in each generation step, training continues afterwards, all processes log the same."""
    spec = {**SPEC, "tasks": SPEC["tasks"][:2], "max_instances_per_task": 2, "max_new_tokens": 4, "every_n_steps": 1}
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_WORKER)
    out = tmp_path / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--use_deepspeed",
           "--zero_stage", "3", "--main_process_port", "0", str(script), str(out), json.dumps(spec),
           json.dumps(TINY_LLAMA)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    for step in (1, 2):
        lines = [json.loads(x)
                 for x in (out / "heldout_eval" / f"step-{step}" / "predictions.jsonl").read_text().splitlines()]
        assert len(lines) == 4
    logged = [json.loads((out / f"logged.rank{r}.json").read_text()) for r in (0, 1)]
    assert [h["step"] for h in logged[0]] == [1, 2] and logged[0] == logged[1]
    best = json.loads((out / "best_heldout_checkpoint.json").read_text())
    assert best["step"] in (1, 2) and [h["step"] for h in best["history"]] == [1, 2]
