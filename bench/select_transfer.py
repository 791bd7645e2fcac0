"""Transfer experiment for `mixture select`: train on the top-k selected tasks vs k random tasks, per target.

For each held-out target task of the bundled SuperNI sample, the quickstart model (recipes/quickstart.yaml)
is trained on (a) the k tasks `mixture select` ranks first for the target and (b) k tasks drawn at random
from the same candidates (the sample's 60 training tasks), with the same number of steps, then evaluated on
the target (definition + 2 positive examples, ROUGE-L, official SuperNI metric). Every run is a real
`mixtune train` process; results go to <out>/results.jsonl (one line per run, appended, so an interrupted
experiment resumes) and a table is printed.

    # the reduced version reported in docs/selection.md
    python bench/select_transfer.py --out runs/select_transfer --targets 4 --seeds 0 --steps 60 --batch 8
    # the full version: the 12 held-out tasks x 2 arms x 3 seeds at quickstart scale (300 steps of 16)
    python bench/select_transfer.py --out runs/select_transfer_full --targets 12 --seeds 0,1,2 --steps 300 \
        --batch 16 --eval-instances 100
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


def write_mixtures(out: Path, target: str, method: str, k: int, seed: int, total: int) -> dict[str, Path]:
    """The selected and the random mixture YAML for one target and seed."""
    from mixtune.mixtures.sampler import stable_key
    from mixtune.mixtures.task_select import collection_pool, mixture_yaml, select_for_targets, task_targets
    from mixtune.mixtures.task_select.select import Selection

    pool = collection_pool("bundled")
    pool.mixture = {"seed": seed, "total_examples": total, "held_out": {"split": "default"}}
    targets = task_targets(pool, [target])
    chosen = select_for_targets(pool, targets, method, k)
    rng = np.random.default_rng([seed, stable_key(target)])
    random = Selection("random", targets, chosen.candidates, rng.random((len(chosen.candidates), 1)), k,
                       pool_description=pool.description)
    paths = {}
    for arm, selection in (("selected", chosen), ("random", random)):
        path = out / "mixtures" / f"{target}-{arm}-seed{seed}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mixture_yaml(selection, pool))
        paths[arm] = path
    return paths


def train_and_eval(mixture: Path, target: str, run_dir: Path, *, steps: int, batch: int, seed: int,
                   eval_instances: int) -> float:
    """One `mixtune train` of the quickstart recipe on `mixture`; the target's final def_pos2 ROUGE-L."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "mixtune", "train", str(REPO / "recipes" / "quickstart.yaml"),
           f"data.mixture={mixture}", f"training.max_steps={steps}", f"training.save_steps={steps}",
           f"training.per_device_batch_size={batch}", f"training.seed={seed}",
           f"training.warmup_steps={max(1, steps // 15)}", f"eval.tasks=[{target}]",
           f"eval.max_instances_per_task={eval_instances}", "eval.settings=[def_pos2]", "eval.at_start=false",
           "logging.progress_bar=false", "resume=never", f"output_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = json.loads((run_dir / "heldout_eval" / f"step-{steps}" / "metrics.json").read_text())
    return float(metrics["overall"]["rougeL"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--targets", type=int, default=12, help="first N held-out tasks of the sample (of 12)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--method", default="semb")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-instances", type=int, default=100)
    args = parser.parse_args()
    from mixtune.tasks.collection import open_collection

    sample = open_collection("superni", "bundled")
    held = sample.split("default").test
    targets = [t for t in held if t in sample][: args.targets]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = args.out / "results.jsonl"
    done = {(r["target"], r["arm"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.exists() else set()
    for target in targets:
        for seed in seeds:
            mixtures = write_mixtures(args.out, target, args.method, args.k, seed, args.steps * args.batch)
            for arm, mixture in mixtures.items():
                if (target, arm, seed) in done:
                    continue
                start = time.perf_counter()
                rouge = train_and_eval(mixture, target, args.out / "runs" / f"{target}-{arm}-seed{seed}",
                                       steps=args.steps, batch=args.batch, seed=seed,
                                       eval_instances=args.eval_instances)
                row = {"target": target, "arm": arm, "seed": seed, "rougeL": rouge, "k": args.k,
                       "method": args.method, "steps": args.steps, "batch": args.batch,
                       "eval_instances": args.eval_instances, "seconds": round(time.perf_counter() - start, 1)}
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    print(f"\n| target | selected ({args.method}) | random | difference |\n|---|---|---|---|")
    diffs = []
    for target in targets:
        sel = [r["rougeL"] for r in rows if r["target"] == target and r["arm"] == "selected"]
        rnd = [r["rougeL"] for r in rows if r["target"] == target and r["arm"] == "random"]
        if sel and rnd:
            diffs.append(np.mean(sel) - np.mean(rnd))
            print(f"| {target} | {np.mean(sel):.2f} | {np.mean(rnd):.2f} | {diffs[-1]:+.2f} |")
    if diffs:
        print(f"| mean over {len(diffs)} targets | | | {np.mean(diffs):+.2f} |")


if __name__ == "__main__":
    main()
