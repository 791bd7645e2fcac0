"""Online re-weighting (`mixing: {strategy: online}`, ODM's EXP3 bandit): the update against the paper's formulas,
the floor, the segmented stream as a pure function of (mixture, seed, position, weight history), `mixture show`
and `mixture build`, static mixtures untouched, and real runs: killed and resumed bit-exactly, weights moving
toward the high-loss task, the weights plotted in the training report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mixtune.cli import main
from mixtune.errors import ConfigError
from mixtune.mixtures import load_mixture, plan_mixture
from mixtune.mixtures.online import Exp3, OnlineIndex, exploration, task_groups
from mixtune.mixtures.sampler import build_index, stable_key

REPO = Path(__file__).resolve().parents[1]
ONLINE = {"strategy": "online", "group_by": "category", "every_steps": 2}
MIXTURE = {"name": "online", "seed": 3, "total_examples": 400, "max_instances_per_task": 16,
           "sources": [{"name": "superni", "path": "bundled", "split": "default", "missing_tasks": "skip"}]}


# the tasks split over two sources (task1* and the rest), re-weighted by source: K = 2 arms leave ODM's uniform
# exploration at once, and a task's name says its source
BY_SOURCE = {**MIXTURE, "mixing": {"strategy": "online", "group_by": "source", "every_steps": 2},
             "sources": [{**MIXTURE["sources"][0], "name": "ones", "tasks": {"include": ["task1*"]}},
                         {**MIXTURE["sources"][0], "name": "rest", "tasks": {"exclude": ["task1*"]}}]}


def _plan(mixing: dict | None = None):
    return plan_mixture(load_mixture({**MIXTURE, **({"mixing": mixing} if mixing else {})}))


# -- the bandit ---------------------------------------------------------------------------------------------------

def test_one_update_is_odms_formula_by_hand():
    """K = 2, uniform prior, no floor: the segment drew group 0 three times (mean loss 4), group 1 once (loss 1),
    both at probability 1/2: the paper's turns 1..4. ODM: R̂ ← α R̂ + (1 − α) loss / π per draw, so α^m for m
    draws; ε_t = min(1/K, sqrt(ln K / (K t))); π = (1 − K ε_4) softmax(ε_3 R̂) + ε_4."""
    bandit = Exp3(np.array([0.5, 0.5]), floor=0.0, smoothing=0.9)
    got = bandit.update(np.array([0.5, 0.5]), np.array([4.0, 1.0]), np.array([3, 1]))
    r0, r1 = (1 - 0.9**3) * 4 / 0.5, (1 - 0.9) * 1 / 0.5
    eps3, eps4 = (min(0.5, math.sqrt(math.log(2) / (2 * t))) for t in (3, 4))
    q0 = math.exp(eps3 * r0) / (math.exp(eps3 * r0) + math.exp(eps3 * r1))
    assert got == pytest.approx([(1 - 2 * eps4) * q0 + eps4, (1 - 2 * eps4) * (1 - q0) + eps4], abs=1e-12)
    assert bandit.rewards.tolist() == pytest.approx([r0, r1]) and bandit.pulls == 4
    assert exploration(37, 0) == 1 / 37 and exploration(37, 10**6) == pytest.approx(math.sqrt(math.log(37) / 37e6))


def _simulate(losses: list[float], segments: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    bandit = Exp3(np.array([0.05, 0.15, 0.3, 0.5]), floor=0.03, smoothing=0.9)
    weights = [bandit.initial()]
    for _ in range(segments):
        draws = rng.multinomial(160, weights[-1])
        weights.append(bandit.update(weights[-1], np.array(losses), draws))
    return np.array(weights)


def test_weights_move_toward_the_high_loss_group_and_the_floor_holds():
    """Four groups, the rarest (prior 0.05) with a loss five times the others': over 40 segments of 160 draws
    its weight ends well above the weight it gets when all losses are equal (ODM's importance weighting alone
    lifts rare groups a little), the others' weights below theirs; every weight stays at or above the floor."""
    high, equal = _simulate([5.0, 1.0, 1.0, 1.0]), _simulate([1.0, 1.0, 1.0, 1.0])
    for w in (high, equal):
        assert w.min() >= 0.03 - 1e-12 and np.allclose(w.sum(axis=1), 1)
        assert w[0] == pytest.approx(0.03 + (1 - 4 * 0.03) * np.array([0.05, 0.15, 0.3, 0.5]))
    late_high, late_equal = high[-10:].mean(axis=0), equal[-10:].mean(axis=0)
    assert late_high[0] > late_equal[0] + 0.01 and late_high[0] > 1.5 * 0.05
    assert (late_high[1:] < late_equal[1:]).all()


# -- the stream ---------------------------------------------------------------------------------------------------

def _index(plan, history):
    names, groups = task_groups(plan.tasks, plan.spec.mixing.group_by)
    index = OnlineIndex(plan, groups, len(names), 40)
    for w in history:
        index.extend(np.asarray(w))
    return names, groups, index


def test_the_stream_is_a_function_of_seed_position_and_weight_history():
    plan = _plan(ONLINE)
    names, groups, _ = _index(plan, [])
    k = len(names)
    uniform, skewed = np.full(k, 1 / k), np.eye(k)[3] * 0.9 + 0.1 / k
    _, _, a = _index(plan, [uniform, uniform, skewed])
    _, _, b = _index(plan, [uniform, uniform, skewed])
    _, _, c = _index(plan, [uniform, uniform, uniform])
    assert np.array_equal(a.task_ids, b.task_ids) and np.array_equal(a.rows, b.rows)
    assert np.array_equal(a.task_ids[:80], c.task_ids[:80]) and np.array_equal(a.rows[:80], c.rows[:80])
    assert (groups[a.task_ids[80:]] == 3).mean() > 0.7 > (groups[c.task_ids[80:]] == 3).mean()
    other = plan_mixture(load_mixture({**MIXTURE, "seed": 4, "mixing": ONLINE}))
    assert not np.array_equal(_index(other, [uniform])[2].task_ids, a.task_ids[:40])


def test_a_tasks_instances_follow_the_static_samplers_pool_order():
    """The c-th occurrence of a task takes the same row as in the static sampler: its pool without replacement,
    pass after pass (a one-task static index of the same seed is the oracle)."""
    plan = _plan(ONLINE)
    _, _, index = _index(plan, [np.full(len(_index(plan, [])[0]), 1 / len(_index(plan, [])[0]))] * 30)
    counts = np.bincount(index.task_ids, minlength=len(plan.tasks))
    t = int(np.argmax(counts))
    task = plan.tasks[t]
    assert counts[t] > len(task.pool)  # more than one pass
    oracle = build_index(np.array([1.0]), [task.pool], int(counts[t]), plan.seed,
                         [stable_key(f"{task.source}\0{task.name}")])
    assert index.rows[index.task_ids == t].tolist() == oracle.rows.tolist()


# -- the mixture file, show and build -------------------------------------------------------------------------------

def test_a_static_mixture_is_untouched():
    """Its hash is the one it had before `mixing` existed (recorded from the quickstart mixture), and an explicit
    `strategy: static` is the same mixture; the golden build hashes are checked in test_mixture_build.py."""
    spec = load_mixture(REPO / "data_mixtures" / "quickstart.yaml")
    assert plan_mixture(spec).hash == "dfdcdb37bee3888b"
    assert _plan().hash == _plan({"strategy": "static", "group_by": "source"}).hash != _plan(ONLINE).hash


def test_show_explains_and_build_refuses_an_online_mixture(tmp_path, capsys):
    path = REPO / "data_mixtures" / "quickstart_online.yaml"
    assert main(["mixture", "show", str(path), "--json"]) == 0
    mixing = json.loads(capsys.readouterr().out)["mixing"]
    assert (mixing["method"], mixing["group_by"], mixing["num_groups"], mixing["every_steps"]) == \
        ("exp3", "category", 37, 10)
    assert "2312.02406" in mixing["paper"] and mixing["floor"] == 0.002
    assert sum(g["initial_rate"] for g in mixing["groups"]) == pytest.approx(1)
    assert main(["mixture", "show", str(path)]) == 0
    assert "online re-weighting: exp3" in capsys.readouterr().out.replace("\n", " ")
    assert main(["mixture", "build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "quickstart_online.yaml" in err and "mixing.strategy" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, words", [
    ({"mixing": {"strategy": "online", "floor": 0.5}}, "mixing.floor"),
    ({"mixing": {"strategy": "online", "every_steps": 0}}, "mixing.every_steps"),
    ({"mixing": {"strategy": "online", "method": "doremi"}}, "mixing.method"),
])
def test_bad_online_settings_are_errors_naming_the_field(tmp_path, change, words):
    with pytest.raises(ConfigError) as e:
        from mixtune.train.online_mixing import OnlineMixing

        OnlineMixing(plan_mixture(load_mixture({**MIXTURE, **change})))
    assert words in str(e.value)


def test_resuming_with_another_global_batch_is_refused():
    """The segment size (every_steps × global batch) is part of the saved state: another one is an error naming
    both; the same one restores the history and the bandit exactly."""
    from mixtune.train.online_mixing import OnlineMixing

    plan = _plan(ONLINE)
    saved = OnlineMixing(plan)
    saved.start(global_batch=4, state=None)
    saved.ensure(8)
    saved.add_step(np.linspace(0, 3, len(plan.tasks)), np.ones(len(plan.tasks)))
    saved.end_segment(0)
    state = json.loads(json.dumps(saved.state()))
    again = OnlineMixing(plan)
    again.start(global_batch=4, state=state)
    assert [w.tolist() for w in again.history] == [w.tolist() for w in saved.history]
    assert again.bandit.rewards.tolist() == saved.bandit.rewards.tolist() and again.bandit.pulls == 8
    with pytest.raises(ConfigError) as e:
        OnlineMixing(plan).start(global_batch=8, state=state)
    assert "8 positions" in str(e.value) and "16" in str(e.value) and "global batch" in str(e.value)


def test_online_with_data_workers_is_refused(tmp_path):
    from mixtune.recipe import load_recipe
    from mixtune.train.run import run_training

    recipe = yaml.safe_load((REPO / "recipes" / "tiny_causal.yaml").read_text())
    recipe["data"]["mixture"] = {**MIXTURE, "mixing": ONLINE}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as e:
        run_training(load_recipe(path, ["data.num_workers=2", f"output_dir={tmp_path / 'out'}"]))
    assert "data.num_workers" in str(e.value) and "r.yaml" in str(e.value)


# -- real runs ----------------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _recipe(tmp_path: Path, mixture: dict) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny_causal.yaml").read_text())
    recipe["data"]["mixture"] = mixture
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


RUN = ["training.max_steps=8", "training.save_steps=3", "training.logging_steps=1", "training.save_total_limit=null",
       "training.per_device_batch_size=2", "data.max_length=64", "data.max_source_length=48"]


def _train(recipe: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mixtune", "train", str(recipe), *RUN, f"output_dir={out}"],
                            cwd=REPO, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.integration
def test_a_killed_online_run_resumes_with_the_same_weights_and_model(tmp_path):
    """8 steps, weights updated every 2: straight vs SIGKILLed after checkpoint-3 (inside segment 1, so the
    segment's partial losses come from the checkpoint) and resumed: the same weight history (every line of
    mixing_weights.jsonl and the checkpoint state), the same task losses, bit-identical parameters."""
    recipe = _recipe(tmp_path, BY_SOURCE)
    straight = tmp_path / "straight"
    proc = _train(recipe, straight, tmp_path / "straight.log")
    assert proc.wait(timeout=420) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    killed = tmp_path / "killed"
    proc = _train(recipe, killed, tmp_path / "killed.log")
    deadline = time.time() + 300
    try:
        while not (killed / "checkpoint-3" / "COMPLETE").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (killed / "final").exists()
    proc = _train(recipe, killed, tmp_path / "resumed.log")
    assert proc.wait(timeout=420) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert "resuming from" in (killed / "train.log").read_text()

    lines = (straight / "mixing_weights.jsonl").read_text().splitlines()
    assert [json.loads(x)["segment"] for x in lines] == [0, 1, 2, 3, 4, 5]
    assert (killed / "mixing_weights.jsonl").read_text().splitlines() == lines
    state = json.loads((straight / "checkpoint-6" / "mixtune_state.json").read_text())["mixing"]
    assert json.loads((killed / "checkpoint-6" / "mixtune_state.json").read_text())["mixing"] == state
    assert len(state["history"]) == 5 and len({tuple(w) for w in state["history"]}) == 4
    assert (killed / "losses.jsonl").read_text() == (straight / "losses.jsonl").read_text()
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((straight / "final" / "mixtune_run.json").read_text())
    assert sum(info["trained_task_counts"].values()) == 16


def _write_task(path: Path, definition: str, outputs: list[str]) -> None:
    lines = [{"definition": definition}] + [{"input": f"item {i}", "output": o} for i, o in enumerate(outputs)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.integration
def test_weights_move_toward_the_high_loss_task_in_a_real_run(tmp_path):
    """Two JSONL tasks of equal size: one always answers `yes` (learned in a few steps), one answers a random
    12-character code (its loss stays high). The tiny model's own training losses move the weight of the random task
    from 0.5 to above it; the floor (0.2) holds throughout; the report plots the weights."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write_task(folder / "constant.jsonl", "Say yes.", ["yes"] * 40)
    _write_task(folder / "random.jsonl", "Say a code.", ["".join(rng.choice(letters, 12)) for _ in range(40)])
    mixture = {"name": "two", "seed": 0, "total_examples": 400, "held_out": {"allow": True},
               "mixing": {"strategy": "online", "group_by": "task", "every_steps": 2, "floor": 0.2},
               "sources": [{"name": "mine", "type": "jsonl", "path": str(folder)}]}
    recipe = _recipe(tmp_path, mixture)
    out = tmp_path / "run"
    args = ["training.max_steps=24", "training.learning_rate=1e-2", "training.per_device_batch_size=4",
            "training.save_steps=24", "training.logging_steps=2", "data.max_length=64", f"output_dir={out}"]
    done = subprocess.run([sys.executable, "-m", "mixtune", "train", str(recipe), *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "mixing_weights.jsonl").read_text().splitlines()]
    random_w = [x["weights"]["random"] for x in lines]
    assert random_w[0] == pytest.approx(0.5) and min(min(x["weights"].values()) for x in lines) >= 0.2 - 1e-12
    # ODM's tilt is modest (the importance weight loss / π shrinks as π grows): above 0.5 once the gap opens
    assert min(random_w[5:]) > 0.5 and np.mean(random_w[-4:]) > 0.52, random_w
    losses = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines()]
    last = losses[-1]["per_task"]
    assert last["random"]["loss"] > last["constant"]["loss"]
    report = (out / "training_report.md").read_text()
    assert "## Online mixing weights" in report and "![mixing weights over steps](mixing_weights.png)" in report
    assert (out / "mixing_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the planned examples follow the weights each segment was drawn with (8 examples per segment), not the
    # static 50/50 rates, and add up to the 96 examples trained on
    section = report.split("## Examples and tokens per task")[1].split("\n## ")[0]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in section.splitlines() if r.startswith("| ")]
    rows = {c[0]: float(c[1]) for c in cells[2:]}
    by_hand = sum(x["weights"]["random"] * 8 for x in lines[:12])
    assert rows["random"] == pytest.approx(by_hand, abs=0.05) and rows["random"] > 48 + 1
    assert rows["random"] + rows["constant"] == pytest.approx(96, abs=0.1)
    # a fresh run into the same folder starts the weights file over
    again = subprocess.run([sys.executable, "-m", "mixtune", "train", str(recipe), *args, "training.max_steps=2",
                            "training.save_steps=2", "resume=never"], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=420)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (out / "mixing_weights.jsonl").read_text().splitlines()] == [0, 0, 2]


@pytest.mark.integration
def test_two_processes_sample_every_segment_from_the_same_weights(tmp_path):
    """Two processes (torchrun, gloo): each reduces the per-task losses over both and updates on its own.
    Every position either process trained on (its --data-order-log) holds the task that the main process's
    weight history (mixing_weights.jsonl) gives there, in segments after several updates too."""
    import socket

    recipe = _recipe(tmp_path, BY_SOURCE)
    out, order = tmp_path / "run", tmp_path / "order.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*RUN[:-3], "training.per_device_batch_size=1", "data.max_length=64", "data.max_source_length=48"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), "-m", "mixtune", "train", str(recipe), *args, f"output_dir={out}",
                           "--data-order-log", str(order)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    history = [np.array(list(json.loads(x)["weights"].values())) for x in
               (out / "mixing_weights.jsonl").read_text().splitlines()]
    assert len(history) == 6 and not np.allclose(history[2], history[4])
    plan = plan_mixture(load_mixture(BY_SOURCE))
    names, groups = task_groups(plan.tasks, "source")
    assert list(json.loads((out / "mixing_weights.jsonl").read_text().splitlines()[0])["weights"]) == names
    index = OnlineIndex(plan, groups, len(names), 2 * 2)  # every_steps 2 × global batch 2
    for w in history[:4]:
        index.extend(w)
    seen = {}
    for line in order.read_text().splitlines():
        rec = json.loads(line)
        seen.update({(rec["rank"], p): t for p, t in zip(rec["positions"], rec["tasks"], strict=True)})
    assert {r for r, _ in seen} == {0, 1} and sorted(p for _, p in seen) == list(range(16))
    assert all(plan.tasks[int(index.task_ids[p])].name == task for (_, p), task in seen.items())
    assert len(set(groups[index.task_ids].tolist())) == 2
