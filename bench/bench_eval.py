"""Evaluation benchmarks: scoring throughput (this file) and generation throughput (bench_eval_generation.py).

Scoring: `mixtune eval score` on 10,000 predictions built from the bundled sample's held-out tasks (a mix of
exact, normalised-exact, partial, copied-input, copied-demo and empty predictions, like a real run), compared
with the official script's way of scoring (a new RougeScorer per pair, un-memoised stemming) in the same process.

    python bench/bench_eval.py [--n 10000] [--scoring-only] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _predictions(n: int) -> list[dict]:
    from mixtune.eval.baselines import iter_baseline_records
    from mixtune.eval.predictions import resolve_collection

    collection = resolve_collection("bundled")
    base = list(iter_baseline_records(collection, "copy_demo", max_instances=100))
    records = []
    for i in range(n):
        r = base[i % len(base)]
        out, inp = r["Instance"]["output"], r["Instance"]["input"]
        kind = i % 6
        pred = [out[0], out[-1].upper() + "!", inp, r["prediction"], "",
                " ".join(out[0].split()[: max(1, len(out[0].split()) // 2)]) + f" extra words {i}"][kind]
        # each copy its own instance id: a predictions file holds one line per instance
        records.append({**r, "Instance": {**r["Instance"], "id": f"{r['Instance']['id']}#{i // len(base)}"},
                        "prediction": pred})
    return records


def _official_style(records: list[dict]) -> tuple[float, float]:
    """The official script's loop: normalise per call, a fresh RougeScorer per (prediction, reference)."""
    from rouge_score import rouge_scorer

    def normalize(s: str) -> str:
        exclude = set(string.punctuation)
        return " ".join("".join(ch for ch in s.lower() if ch not in exclude).split())

    em = rl = 0.0
    for r in records:
        refs, pred = r["Instance"]["output"], r["prediction"]
        em += max(normalize(pred) == normalize(g) for g in refs)
        rl += max(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(g, pred)["rougeL"].fmeasure
                  for g in refs)
    return round(100 * em / len(records), 4), round(100 * rl / len(records), 4)


def bench_scoring(n: int = 10_000) -> dict:
    """Scoring throughput (instances/s): CLI end to end, in-process 1 and 2 workers, official-style loop."""
    from mixtune.eval.metrics import compute_scores, rouge_scorer
    from mixtune.eval.predictions import write_predictions

    records = _predictions(n)
    results: dict = {"instances": n, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        write_predictions(path, records)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t = time.perf_counter()
        # no --collection: the copies are not the collection's instances, so the file's references are scored
        proc = subprocess.run([sys.executable, "-m", "mixtune", "eval", "score", str(path), "--json"],
                              capture_output=True, text=True, env=env, check=True)
        results["cli_seconds"] = time.perf_counter() - t
        cli = json.loads(proc.stdout)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mixtune.eval.metrics as m; m.rouge_scorer('default')"],
                       env=env, check=True)
        results["cli_startup_seconds"] = time.perf_counter() - t  # interpreter + nltk/rouge-score imports

    rouge_scorer("default")  # imports nltk (seconds), once
    t = time.perf_counter()
    ours = compute_scores(records, workers=1)
    results["inprocess_1_worker_seconds"] = time.perf_counter() - t
    rouge_scorer.cache_clear()
    rouge_scorer("default")
    t = time.perf_counter()
    compute_scores(records, workers=2)
    results["inprocess_2_workers_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    official = _official_style(records)
    results["official_style_seconds"] = time.perf_counter() - t
    results["agree"] = (abs(official[0] - ours.overall["exact_match"]) < 1e-4
                        and abs(official[1] - ours.overall["rougeL"]) < 1e-4
                        and cli["overall"] == ours.overall)
    results["overall"] = ours.overall
    for key in ("cli", "inprocess_1_worker", "inprocess_2_workers", "official_style"):
        results[f"{key}_per_s"] = n / results[f"{key}_seconds"]
    results["speedup_vs_official_style"] = results["official_style_seconds"] / results["inprocess_1_worker_seconds"]
    return results


def print_scoring(r: dict) -> None:
    print(f"## eval score: {r['instances']} predictions ({r['cpus']} CPUs, load average {r['load_average']:.1f})")
    print(f"- `mixtune eval score --json` end to end: {r['cli_seconds']:.2f} s ({r['cli_per_s']:.0f} instances/s); "
          f"a fresh interpreter importing mixtune.eval.metrics + rouge-score/nltk alone: "
          f"{r['cli_startup_seconds']:.2f} s")
    print(f"- in process, 1 worker: {r['inprocess_1_worker_seconds']:.2f} s ({r['inprocess_1_worker_per_s']:.0f}/s)")
    print(f"- in process, 2 workers (fork): {r['inprocess_2_workers_seconds']:.2f} s "
          f"({r['inprocess_2_workers_per_s']:.0f}/s)")
    print(f"- official script's loop (new RougeScorer per pair): {r['official_style_seconds']:.2f} s "
          f"({r['official_style_per_s']:.0f}/s); mixtune 1 worker is {r['speedup_vs_official_style']:.1f}x faster")
    print(f"- same numbers as the official loop (1e-4) and CLI == in-process: {r['agree']}; overall {r['overall']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="predictions to score")
    parser.add_argument("--scoring-only", action="store_true", help="skip the generation benchmark")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    figures: dict = {"scoring": bench_scoring(args.n)}
    print_scoring(figures["scoring"])
    gen_file = Path(__file__).with_name("bench_eval_generation.py")
    if not args.scoring_only and gen_file.is_file():
        spec = importlib.util.spec_from_file_location("bench_eval_generation", gen_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        figures["generation"] = module.bench_generation()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
