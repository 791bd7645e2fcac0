"""The shipped GPU recipes say what they claim: an edit that breaks the Tk-Instruct reproduction, the 8B
recipes or the multi-node launch files fails here."""

from __future__ import annotations

import json
import math
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_LLAMA, TINY_T5, trainer_logged_losses

from mixtune.cli import main
from mixtune.mixtures.spec import load_mixture
from mixtune.recipe import load_recipe
from mixtune.train.deepspeed import deepspeed_config, zero_stage
from mixtune.train.launch import launch_command
from mixtune.train.task_losses import read_losses

RECIPES = REPO / "recipes"
LAUNCH = RECIPES / "launch"
SPLITS = REPO / "mixtune" / "data" / "superni" / "splits" / "default"


def _effective_batch(recipe) -> int:
    t, d = recipe.training, recipe.distributed
    return t.per_device_batch_size * t.gradient_accumulation_steps * d.nodes * d.processes_per_node


def _passes(recipe, mixture) -> float:
    """Passes over each capped pool: the mixture's epochs times the recipe's epochs over the mixture."""
    return float(mixture.epochs) * (recipe.training.epochs if recipe.training.epochs is not None else 1.0)


# --- Tk-Instruct 3B: the reproduction's settings (Wang et al., 2022; yizhongw/Tk-Instruct train script) ---

def test_tk_instruct_recipe_matches_the_paper() -> None:
    recipe = load_recipe(RECIPES / "tk_instruct_3b.yaml")
    m, d, t = recipe.model, recipe.data, recipe.training
    assert (m.name_or_path, m.kind, m.dtype) == ("google/t5-xl-lm-adapt", "seq2seq", "bf16")
    assert m.lora is None and m.chat_template is None
    assert t.learning_rate == pytest.approx(5e-5)
    assert t.lr_scheduler == "constant" and t.warmup_steps == 0 and t.warmup_ratio == 0
    assert t.max_steps is None
    assert (d.max_source_length, d.max_target_length, d.packing) == (1024, 128, False)
    assert zero_stage(deepspeed_config(recipe.distributed.deepspeed)) == 2
    # 8 GPUs x 1 example x 2 accumulation steps = effective batch 16, as the authors' script on 8 GPUs
    assert recipe.distributed.processes_per_node == 8 and recipe.distributed.nodes == 1
    assert t.per_device_batch_size == 1 and _effective_batch(recipe) == 16

    mixture = load_mixture(d.mixture)
    assert _passes(recipe, mixture) == 2.0                      # 2 epochs in all
    assert mixture.max_instances_per_task == 100 and mixture.temperature == 1.0
    assert mixture.total_examples is None and not mixture.mixtures and not mixture.held_out.allow
    (source,) = mixture.sources
    assert (source.type, source.split, source.missing_tasks) == ("superni", "default", "error")
    assert not source.tasks.include and not source.tasks.exclude and not source.tasks.weights
    enc = source.encoding
    assert (enc.definition, enc.pos_examples, enc.neg_examples, enc.explanation, enc.task_name, enc.tk_instruct) \
        == (True, 2, 0, False, False, False)

    ev = recipe.eval
    assert ev.settings[0] == "def_pos2" and ev.split == "default" and ev.max_instances_per_task == 100
    assert (ev.max_source_length, ev.max_new_tokens) == (1024, 128)


def _full_shaped_superni(root: Path) -> dict[str, int]:
    """A SuperNI folder with every task of the official default train/test lists (small synthetic instances,
    sizes 20..260 so the cap of 100 binds for some); returns the train task sizes."""
    template = json.loads((REPO / "mixtune/data/superni/tasks/task036_qasc_topic_word_to_generate_related_fact.json")
                          .read_text(encoding="utf-8"))
    (root / "tasks").mkdir(parents=True)
    (root / "splits").mkdir()
    (root / "splits" / "default").mkdir()
    for part in ("train", "test", "excluded"):
        (root / "splits" / "default" / f"{part}_tasks.txt").write_text(
            (SPLITS / f"{part}_tasks.txt").read_text(encoding="utf-8"), encoding="utf-8")
    train = (SPLITS / "train_tasks.txt").read_text(encoding="utf-8").split()
    test = (SPLITS / "test_tasks.txt").read_text(encoding="utf-8").split()
    sizes = {}
    for i, name in enumerate(train + test):
        n = 20 + (i % 7) * 40
        task = {**template, "Instances": [{"id": f"{name}-{j}", "input": f"word {j} of {name}",
                                           "output": [f"answer {j}"]} for j in range(n)]}
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task), encoding="utf-8")
        if name in train:
            sizes[name] = n
    return sizes


@pytest.mark.integration
def test_tk_instruct_plans_on_a_full_shaped_collection(tmp_path, capsys) -> None:
    """`recipe check --collection` plans the reproduction's mixture: 756 tasks, cap 100, 2 epochs, batch 16."""
    sizes = _full_shaped_superni(tmp_path / "ni")
    assert len(sizes) == 756
    rc = main(["recipe", "check", str(RECIPES / "tk_instruct_3b.yaml"), "--collection", str(tmp_path / "ni")])
    line = capsys.readouterr().out.strip()
    assert rc == 0, line
    examples = 2 * sum(min(n, 100) for n in sizes.values())
    steps = math.ceil(examples / 16)
    assert f"{examples:,} examples from 756 tasks, {steps:,} steps of 16 examples" in line

    from mixtune.mixtures.plan import plan_mixture

    plan = plan_mixture(load_mixture(RECIPES.parent / "data_mixtures/superni_default.yaml",
                                     collection=str(tmp_path / "ni")))
    counts = {t["name"]: t["realised_examples"] for t in plan.summary()["tasks"]}
    assert counts == {name: 2 * min(n, 100) for name, n in sizes.items()}
    prompt = plan.example(0)["prompt"]
    assert prompt.startswith("Definition:") and "Positive Example 2" in prompt
    assert "Positive Example 3" not in prompt and "Negative Example" not in prompt


# --- the 8B recipes ---

def test_llama_zero3_recipe() -> None:
    recipe = load_recipe(RECIPES / "llama31_8b_zero3.yaml")
    m, d, t = recipe.model, recipe.data, recipe.training
    assert m.kind == "causal" and m.dtype == "bf16" and m.gradient_checkpointing and m.lora is None
    assert m.chat_template is not None and m.attn_implementation == "sdpa"
    assert (d.packing and d.max_target_length is None
            and d.max_length >= d.max_source_length + 128)  # room for the answer
    assert 1e-5 <= t.learning_rate <= 2e-5 and t.lr_scheduler == "cosine" and t.warmup_ratio > 0
    assert zero_stage(deepspeed_config(recipe.distributed.deepspeed)) == 3
    assert recipe.eval.chat


def test_llama_lora_is_the_single_gpu_variant() -> None:
    full = load_recipe(RECIPES / "llama31_8b_zero3.yaml")
    lora = load_recipe(RECIPES / "llama31_8b_lora.yaml")
    assert lora.model.lora is not None
    assert (lora.model.lora.r, lora.model.lora.alpha, lora.model.lora.target_modules) == (16, 32, "all-linear")
    assert lora.distributed.deepspeed is None
    assert (lora.distributed.nodes, lora.distributed.processes_per_node) == (1, 1)
    # LoRA trains no embedding rows: the chat markers must be tokens the model already has (its own template)
    assert lora.model.chat_template == "tokenizer" and lora.model.name_or_path.endswith("-Instruct")
    assert lora.data == full.data and _effective_batch(lora) == _effective_batch(full)
    assert lora.model.gradient_checkpointing and lora.model.dtype == "bf16"


def test_multinode_recipe_is_the_zero3_run_on_two_nodes() -> None:
    one = load_recipe(RECIPES / "llama31_8b_zero3.yaml")
    two = load_recipe(RECIPES / "multinode_zero3.yaml")
    assert (two.distributed.nodes, two.distributed.processes_per_node) == (2, 8)
    assert zero_stage(deepspeed_config(two.distributed.deepspeed)) == 3
    assert two.model == one.model and two.data == one.data
    assert _effective_batch(two) == _effective_batch(one)
    same = ("learning_rate", "lr_scheduler", "warmup_ratio", "epochs", "seed")
    assert {k: getattr(two.training, k) for k in same} == {k: getattr(one.training, k) for k in same}


# --- headers: hardware, launch commands, override example, published number ---

@pytest.mark.parametrize("name", ["tk_instruct_3b", "llama31_8b_zero3", "llama31_8b_lora", "multinode_zero3"])
def test_header_documents_hardware_launch_override_and_number(name) -> None:
    text = (RECIPES / f"{name}.yaml").read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("# ")
    for needle in ("Hardware", "Override example", "Published number" if name != "tk_instruct_3b" else "54.0",
                   "Wang et al., 2022", f"recipes/{name}.yaml", "mixtune recipe check" if name != "multinode_zero3"
                   else "sbatch recipes/launch/slurm_multinode.sbatch"):
        assert needle in header, (name, needle)
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    if recipe.distributed.nodes == 1:  # the header's launch line is what --print-launch prints
        assert launch_command(recipe, f"recipes/{name}.yaml") in header


# --- multi-node launch files ---

def test_accelerate_config_matches_the_recipe() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    recipe = load_recipe(RECIPES / "multinode_zero3.yaml")
    config = load_config_from_file(str(LAUNCH / "accelerate_multinode.yaml"))
    assert config.num_machines == recipe.distributed.nodes
    assert config.num_processes == recipe.distributed.nodes * recipe.distributed.processes_per_node
    assert str(config.distributed_type).endswith("MULTI_GPU")  # DeepSpeed comes from the recipe
    assert config.machine_rank == 0 and config.main_process_ip and config.main_process_port


def test_hostfile_example_parses_with_deepspeed() -> None:
    from deepspeed.launcher.runner import fetch_hostfile

    recipe = load_recipe(RECIPES / "multinode_zero3.yaml")
    hosts = fetch_hostfile(str(LAUNCH / "hostfile.example"))
    assert list(hosts.values()) == [recipe.distributed.processes_per_node] * recipe.distributed.nodes


def _fake_cluster_bin(folder: Path, record: Path) -> Path:
    """Stand-ins for the cluster's scontrol/srun and for accelerate: srun runs its command once per node with
    that node's SLURM_NODEID; accelerate records its arguments (one JSON line per node)."""
    folder.mkdir()
    scripts = {
        "scontrol": '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a17\\ngpu-a18\\n"\n',
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                'for ((n=0; n<SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@" || exit 1; done\n',
        "accelerate": f'#!/usr/bin/env python3\nimport json, sys\n'
                      f'open({str(record)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(body, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def test_sbatch_script_starts_one_accelerate_per_node(tmp_path) -> None:
    from accelerate.commands.launch import launch_command_parser

    script = LAUNCH / "slurm_multinode.sbatch"
    text = script.read_text(encoding="utf-8")
    recipe = load_recipe(RECIPES / "multinode_zero3.yaml")
    assert f"#SBATCH --nodes={recipe.distributed.nodes}" in text
    assert f"#SBATCH --gpus-per-node={recipe.distributed.processes_per_node}" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    record = tmp_path / "argv.jsonl"
    bin_dir = _fake_cluster_bin(tmp_path / "bin", record)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-a[17-18]"}
    proc = subprocess.run(["bash", str(script), "training.learning_rate=1e-5", "output_dir=runs/x y"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert len(calls) == 2
    parser = launch_command_parser()
    for rank, argv in enumerate(calls):
        assert argv[0] == "launch"
        args = parser.parse_args(argv[1:])
        assert args.machine_rank == rank and args.num_machines == 2 and args.num_processes == 16
        assert args.main_process_ip == "gpu-a17" and args.main_process_port == 29500
        assert (REPO / args.config_file).is_file()
        assert args.module and args.training_script == "mixtune"
        assert args.training_script_args == ["train", "recipes/multinode_zero3.yaml",
                                             "training.learning_rate=1e-5", "output_dir=runs/x y"]
    assert shlex.join(["sbatch", "recipes/launch/slurm_multinode.sbatch"]) in \
        (RECIPES / "multinode_zero3.yaml").read_text(encoding="utf-8")


def test_chat_mixture_holds_both_encodings_once_per_instance() -> None:
    spec = load_mixture(REPO / "data_mixtures" / "superni_chat.yaml")
    assert spec.epochs == 1 and spec.max_instances_per_task == 100
    encodings = sorted((s.encoding.definition, s.encoding.pos_examples) for s in spec.sources)
    assert encodings == [(True, 0), (True, 2)]
    assert {s.split for s in spec.sources} == {"default"} and not spec.held_out.allow
    data = yaml.safe_load((REPO / "data_mixtures" / "superni_chat.yaml").read_text(encoding="utf-8"))
    for source in data["sources"]:  # the bundled sample lacks most official tasks: plan it with `skip`
        source["missing_tasks"] = "skip"
    from mixtune.mixtures.plan import plan_mixture

    plan = plan_mixture(load_mixture(data, collection="bundled"))
    tasks = plan.summary()["tasks"]
    by_source: dict[str, dict[str, int]] = {}
    for task in tasks:
        by_source.setdefault(task["source"], {})[task["name"]] = task["realised_examples"]
    assert by_source["superni_def"] == by_source["superni_def_pos2"]
    assert all(n == min(t["num_instances"], 100) for t in tasks for n in [t["realised_examples"]])


# --- the GPU recipes' settings train together: each recipe on CPU, only the model swapped for a tiny one ---

_TINY_MODELS = {  # YAML flow mappings (JSON is YAML) for `model.config=...`
    "causal": json.dumps({**TINY_LLAMA, "max_position_embeddings": 2048}),
    "seq2seq": json.dumps(TINY_T5),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", ["tk_instruct_3b", "llama31_8b_zero3", "llama31_8b_lora"])
def test_recipe_trains_on_cpu_with_a_tiny_model(name, tmp_path, monkeypatch) -> None:
    """Everything but the model, the data source and DeepSpeed stays as shipped (bf16, packing, chat rendering,
    gradient checkpointing, LoRA, schedule, lengths): two optimizer steps and a saved final model."""
    monkeypatch.chdir(tmp_path)
    path = RECIPES / f"{name}.yaml"
    shipped = load_recipe(path)
    overrides = [
        "model.name_or_path=null", f"model.config={_TINY_MODELS[shipped.model.kind]}",
        f"data.mixture={REPO / 'data_mixtures' / 'superni_sample.yaml'}",
        "distributed.deepspeed=null", "distributed.processes_per_node=1", "eval=null", "logging.wandb=disabled",
        "logging.progress_bar=false", "training.max_steps=2", "training.per_device_batch_size=4",
        "training.gradient_accumulation_steps=1", "training.logging_steps=1", f"output_dir={tmp_path / 'run'}",
    ]
    if shipped.model.chat_template == "tokenizer":  # the tiny model's tokenizer has no chat template of its own
        overrides.append("model.chat_template=default")
    full_finetuning = shipped.model.lora is None
    if full_finetuning:  # without DeepSpeed's fp32 master copy, full fine-tuning keeps fp32 weights
        overrides.append("model.dtype=fp32")
    assert main(["train", str(path), *overrides]) == 0
    # it trained: two logged steps whose loss (the Trainer's, from the model) is finite, equals the per-task loss
    # mixtune computes from the same forward's logits, and starts near ln(vocabulary): a random model's guess
    out = tmp_path / "run"
    lines, logged = read_losses(out), trainer_logged_losses(out)
    assert [x["step"] for x in lines] == sorted(logged) == [1, 2]
    vocab = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    for line in lines:
        assert math.isfinite(logged[line["step"]]) and line["tokens"] > 0
        assert abs(line["loss"] - logged[line["step"]]) < 1e-3  # agree to ~1e-6 in practice (bf16 autocast)
    assert abs(logged[1] - math.log(vocab)) < 0.1 * math.log(vocab), (logged, vocab)
    run = json.loads((out / "final" / "mixtune_run.json").read_text(encoding="utf-8"))
    trained = run["recipe"]
    assert trained["data"]["packing"] == shipped.data.packing
    assert trained["data"]["max_source_length"] == shipped.data.max_source_length
    assert shipped.model.dtype == "bf16" and trained["model"]["dtype"] == ("fp32" if full_finetuning else "bf16")
    assert trained["training"]["precision"] == shipped.training.precision == "bf16"  # bf16 autocast either way
    assert trained["model"]["gradient_checkpointing"] == shipped.model.gradient_checkpointing
    assert (trained["model"]["lora"] is None) == (shipped.model.lora is None)
    assert trained["training"]["learning_rate"] == shipped.training.learning_rate
