"""Transfer experiment for `mixture select`: train on the top-k selected tasks vs k random tasks, per target.

For each held-out target task of the bundled SuperNI sample, the quickstart model (recipes/quickstart.yaml)
is trained on the k tasks `mixture select` ranks first for the target, and evaluated on the target
(definition + 2 positive examples, ROUGE-L, official SuperNI metric). The baseline is k tasks drawn at random
from the same candidates with the same steps and seed. Every target has the same candidates (the sample's
training tasks: the split holds every target out), so one random draw per seed serves every target: the
random run of a seed is trained once and evaluated on all targets (one run per seed instead of one per
target and seed; the script checks that the candidate lists agree). Seeds run in order, random arm first,
so an experiment stopped early still has complete seeds. Every run is a real `mixtune train` process;
results go to <out>/results.jsonl (one line per target and run, appended, so an interrupted experiment
resumes) and a table is printed. Several copies started on the same --out share the runs (each claims the
next run no live copy holds): on a 2-core CPU, two copies with OMP_NUM_THREADS=1 keep both cores busy.

    # the version reported in docs/selection.md: 12 targets x 3 seeds, 100 steps of 16
    python bench/select_transfer.py --out runs/select_transfer --targets 12 --seeds 0,1,2 --steps 100
    # at the quickstart's full length (300 steps of 16)
    python bench/select_transfer.py --out runs/select_transfer_300 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_mixture(out: Path, name: str, selection, pool, *, seed: int, total: int) -> Path:
    """The selection as a mixture YAML with the run's seed and length."""
    from mixtune.mixtures.task_select import mixture_yaml

    pool.mixture = {"seed": seed, "total_examples": total, "held_out": {"split": "default"}}
    path = out / "mixtures" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mixture_yaml(selection, pool))
    return path


def selections(targets: list[str], method: str, k: int, seeds: list[int]):
    """The selection for each target, and the random draw of each seed (from the candidates every target shares)."""
    from mixtune.mixtures.task_select import collection_pool, select_for_targets, task_targets
    from mixtune.mixtures.task_select.select import Selection

    pool = collection_pool("bundled")  # the sample minus the split's held-out tasks
    chosen = {t: select_for_targets(pool, task_targets(pool, [t]), method, k) for t in targets}
    candidate_lists = {tuple(c.task for c in s.candidates) for s in chosen.values()}
    if len(candidate_lists) != 1:
        raise SystemExit("the targets have different candidate lists: a shared random draw would not be fair")
    candidates = next(iter(chosen.values())).candidates
    random = {seed: Selection("random", task_targets(pool, targets), candidates,
                              np.random.default_rng([seed, 7919]).random((len(candidates), 1)), k,
                              pool_description=pool.description) for seed in seeds}
    return pool, chosen, random


def train_and_eval(mixture: Path, targets: list[str], run_dir: Path, *, steps: int, batch: int, seed: int,
                   eval_instances: int) -> dict[str, dict[str, float]]:
    """One `mixtune train` of the quickstart recipe on `mixture`; each target's final def_pos2 metrics."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "mixtune", "train", str(REPO / "recipes" / "quickstart.yaml"),
           f"data.mixture={mixture}", f"training.max_steps={steps}", f"training.save_steps={steps}",
           f"training.per_device_batch_size={batch}", f"training.seed={seed}",
           f"training.warmup_steps={max(1, steps // 15)}", f"eval.tasks=[{','.join(targets)}]",
           f"eval.max_instances_per_task={eval_instances}", "eval.settings=[def_pos2]", "eval.at_start=false",
           "logging.progress_bar=false", "resume=never", f"output_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = json.loads((run_dir / "heldout_eval" / f"step-{steps}" / "metrics.json").read_text())
    return {t: metrics["per_task"][t] for t in targets}


def done_runs(results: Path) -> set[tuple[str, str, int]]:
    """(target, arm, seed) of every finished run (re-read before each run: other workers append too)."""
    if not results.exists():
        return set()
    return {(r["target"], r["arm"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}


def claim(out: Path, name: str) -> bool:
    """Claim run `name` for this process (False when a live process holds it), so that several workers
    started on the same --out share the runs."""
    path = out / "claims" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        holder = int(path.read_text())
        os.kill(holder, 0)
        return holder == os.getpid()
    except (OSError, ValueError):
        pass
    tmp = path.with_suffix(f".{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    return int(path.read_text()) == os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--targets", type=int, default=12, help="first N held-out tasks of the sample (of 12)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--method", default="semb")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-instances", type=int, default=100)
    args = parser.parse_args()
    from mixtune.tasks.collection import open_collection

    sample = open_collection("superni", "bundled")
    held = sample.split("default").test
    targets = [t for t in held if t in sample][: args.targets]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = args.out / "results.jsonl"
    pool, chosen, random = selections(targets, args.method, args.k, seeds)
    total = args.steps * args.batch
    for seed in seeds:
        runs = [("random", f"random-seed{seed}", random[seed], targets)]
        runs += [("selected", f"{t}-selected-seed{seed}", chosen[t], [t]) for t in targets]
        for arm, name, selection, evaluated in runs:
            done = done_runs(results)
            if all((t, arm, seed) in done for t in evaluated) or not claim(args.out, name):
                continue
            mixture = write_mixture(args.out, name, selection, pool, seed=seed, total=total)
            start = time.perf_counter()
            metrics = train_and_eval(mixture, evaluated, args.out / "runs" / name, steps=args.steps,
                                     batch=args.batch, seed=seed, eval_instances=args.eval_instances)
            seconds = round(time.perf_counter() - start, 1)
            tasks = [selection.candidates[i].task for i in selection.selected]
            with results.open("a") as f:
                for target in evaluated:
                    row = {"target": target, "arm": arm, "seed": seed, "rougeL": metrics[target]["rougeL"],
                           "exact_match": metrics[target]["exact_match"], "run": name, "tasks": tasks,
                           "k": args.k, "method": args.method, "steps": args.steps, "batch": args.batch,
                           "eval_instances": args.eval_instances, "seconds": seconds}
                    f.write(json.dumps(row) + "\n")
            print(f"{name}: {seconds:.0f} s, " + ", ".join(f"{t[:24]} {metrics[t]['rougeL']:.2f}" for t in evaluated),
                  flush=True)
    print_table([json.loads(line) for line in results.read_text().splitlines()], targets, sample, args.method)


def print_table(rows: list[dict], targets: list[str], sample, method: str) -> None:
    """Per target: mean ROUGE-L of each arm over the seeds both arms have, their difference; then the means."""
    print(f"\n| target (category) | seeds | selected ({method}) | random | difference |\n|---|---|---|---|---|")
    diffs, wins, pairs = [], 0, 0
    for target in targets:
        by_arm = {arm: {r["seed"]: r["rougeL"] for r in rows if r["target"] == target and r["arm"] == arm}
                  for arm in ("selected", "random")}
        seeds = sorted(set(by_arm["selected"]) & set(by_arm["random"]))
        if not seeds:
            continue
        sel = np.mean([by_arm["selected"][s] for s in seeds])
        rnd = np.mean([by_arm["random"][s] for s in seeds])
        wins += sum(by_arm["selected"][s] > by_arm["random"][s] for s in seeds)
        pairs += len(seeds)
        diffs.append(sel - rnd)
        category = sample.info(target).category
        print(f"| {target} ({category}) | {len(seeds)} | {sel:.2f} | {rnd:.2f} | {sel - rnd:+.2f} |")
    if diffs:
        print(f"\nmean difference over {len(diffs)} targets: {np.mean(diffs):+.2f} ROUGE-L; "
              f"selected above random in {wins} of {pairs} (target, seed) pairs")


if __name__ == "__main__":
    main()
