"""Static vs staged vs online mixing at quickstart scale: held-out ROUGE-L over seeds (docs/mixtures.md).

Each arm is a mixture of the bundled SuperNI sample's 60 training tasks, trained with the quickstart recipe
(recipes/quickstart.yaml: 300 steps of 16 examples) and evaluated on the sample's 12 held-out tasks
(definition + 2 positive examples and zero-shot, 100 instances per task, official SuperNI metrics):

- static: data_mixtures/quickstart.yaml (examples-proportional, temperature 1);
- staged: bench/mixtures/quickstart_curriculum.yaml (30% label-output tasks first, then all tasks);
- online: data_mixtures/quickstart_online.yaml (the static mixture re-weighted online from per-task losses).

Seed s sets both the mixture's seed and `training.seed`. Every run is a real `mixtune train` process; results
go to <out>/results.jsonl, one line per run, appended, so an interrupted comparison resumes where it stopped.

    python bench/mixing_compare.py --out runs/mixing_compare --arms static,staged,online --seeds 0,1,2
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
import yaml

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "static": REPO / "data_mixtures" / "quickstart.yaml",
    "staged": REPO / "bench" / "mixtures" / "quickstart_curriculum.yaml",
    "online": REPO / "data_mixtures" / "quickstart_online.yaml",
}


def seeded_mixture(arm: str, seed: int, out: Path) -> Path:
    """A copy of the arm's mixture file with its seed set to `seed` (the shipped files nest no other file)."""
    spec = yaml.safe_load(ARMS[arm].read_text())
    spec["seed"] = seed
    path = out / "mixtures" / f"{arm}-seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def train_and_eval(mixture: Path, run_dir: Path, seed: int) -> dict[str, float]:
    """One quickstart `mixtune train` on `mixture`; the final held-out metrics per evaluation setting."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "mixtune", "train", str(REPO / "recipes" / "quickstart.yaml"),
           f"data.mixture={mixture}", f"training.seed={seed}", "eval.at_start=false",
           "logging.progress_bar=false", "resume=never", f"output_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    final = sorted((run_dir / "heldout_eval").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    metrics = json.loads((final / "metrics.json").read_text())
    return {f"{setting}_{name}": float(value)
            for setting, block in metrics["settings"].items()
            for name, value in block["overall"].items() if name in ("exact_match", "rougeL")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", default="static,staged,online")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    arms = args.arms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["arm"], r["seed"]) for r in rows}
    for seed in seeds:
        for arm in arms:
            if (arm, seed) in done:
                continue
            start = time.perf_counter()
            scores = train_and_eval(seeded_mixture(arm, seed, args.out), args.out / "runs" / f"{arm}-seed{seed}",
                                    seed)
            row = {"arm": arm, "seed": seed, **scores, "seconds": round(time.perf_counter() - start, 1)}
            args.out.mkdir(parents=True, exist_ok=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("arm", "seed", "seconds")] if rows else []
    print("\n| arm | seeds | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            cells = [f"{np.mean([r[k] for r in mine]):.2f} ± {np.std([r[k] for r in mine]):.2f}" for k in keys]
            print(f"| {arm} | {len(mine)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
