"""Benchmark `mixture select` on a synthetic 1,600-task SuperNI collection: cold embedding vs warm select.

The collection's split files are removed, so all 1,600 tasks (but the target) are candidates.

1. Real encoder, small sample: a cold select (`--real-instances` inputs per task, all embedded with the
   shipped MiniLM) and the same select warm (every vector from the cache), in process and as a
   `mixtune mixture select` process; gives the encoder's throughput (texts/s).
2. Full sample (100 inputs per task, 32 per target): the cache is filled once through the same cache
   code by a stand-in encoder with its own cache key that returns random unit vectors (a CPU cannot
   embed ~160,000 texts in a benchmark's time), then the warm select is timed for semb and retrieval --
   reading the cached vectors is the same work whatever their values. ngram (no model, no cache) is
   timed on the same sample. The baseline is the cold embedding those vectors would cost at the
   throughput measured in (1).

    python bench/bench_select.py --root /tmp/select_bench [--tasks 1600] [--instances 800000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


class RandomEncoder:
    """Stand-in encoder for filling the cache at full size: seeded random unit vectors, its own cache key."""

    name = "bench-random-unit-vectors"
    key = "bench-random-unit-vectors"

    def encode(self, texts: list[str]) -> np.ndarray:
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Best wall time of `repeat` calls (the machine is shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the collection and the cache")
    parser.add_argument("--tasks", type=int, default=1600)
    parser.add_argument("--instances", type=int, default=800_000)
    parser.add_argument("--real-instances", type=int, default=2, help="inputs per task for the real cold run")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cold-rate", type=float, help="skip the cold run; use this throughput (texts/s) "
                                                         "measured by an earlier run for the baseline")
    args = parser.parse_args()
    collection, cache = args.root / "collection", args.root / "cache"
    os.environ["MIXTUNE_CACHE"] = str(cache)
    if not (collection / "splits").exists():
        from synthetic_superni import write_synthetic_collection

        start = time.perf_counter()
        write_synthetic_collection(collection, args.tasks, args.instances)
        print(f"wrote the synthetic collection in {time.perf_counter() - start:.1f} s", flush=True)
    import shutil

    # no held-out split: every one of the 1,600 tasks but the target is a candidate
    shutil.rmtree(collection / "splits", ignore_errors=True)
    from mixtune.mixtures.task_select import collection_pool, mixture_yaml, select_for_targets, task_targets
    from mixtune.mixtures.task_select.encoder import SentenceEncoder

    start = time.perf_counter()
    pool = collection_pool(str(collection))
    print(f"opened {pool.description} in {time.perf_counter() - start:.1f} s (indexing when cold); "
          f"{len(pool.candidates)} candidates", flush=True)
    target_name = pool.candidates[0].task

    def select(method: str, encoder=None, **kw):
        fresh = collection_pool(str(collection))  # what a new `mixture select` process does: open, select, write
        selection = select_for_targets(fresh, task_targets(fresh, [target_name]), method, args.k,
                                       encoder=encoder, **kw)
        mixture_yaml(selection, fresh)
        return selection

    small = {"max_instances": args.real_instances, "target_instances": args.real_instances}
    from mixtune.mixtures.task_select.embedding_cache import embeddings_dir
    from mixtune.tasks.cache import cache_root

    if args.cold_rate is None:
        shutil.rmtree(embeddings_dir(cache_root(), SentenceEncoder().key), ignore_errors=True)  # a cold start
        cold, sel = timed(lambda: select("semb", SentenceEncoder(progress=False), **small), repeat=1)
        rate = sel.embedded / cold
    else:  # the vectors are cached from an earlier run; make sure, and take its throughput
        sel = select("semb", SentenceEncoder(progress=False), **small)
        rate = args.cold_rate
        cold = (len(sel.candidates) + 1) * args.real_instances / rate
        print(f"(cold figures from --cold-rate {rate} texts/s, measured by an earlier run)")
    warm, again = timed(lambda: select("semb", SentenceEncoder(progress=False), **small))
    assert again.embedded == 0
    cmd = [sys.executable, "-m", "mixtune", "mixture", "select", "--collection", str(collection), "--target",
           target_name, "--k", str(args.k), "--method", "semb", "--max-instances", str(args.real_instances),
           "--target-instances", str(args.real_instances), "--out", str(args.root / "selected.yaml"), "--json"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    process = time.perf_counter() - start
    print(f"\n[real MiniLM, {args.real_instances} inputs per task] cold select: {cold:.1f} s "
          f"({sel.embedded} texts embedded, {rate:.1f} texts/s); warm select: {warm:.2f} s in process, "
          f"{process:.2f} s as a `mixtune mixture select` process; cold / warm: {cold / warm:.0f}x", flush=True)

    start = time.perf_counter()
    filled = select("semb", RandomEncoder())
    fill = time.perf_counter() - start
    print(f"\n[full sample: <= 100 inputs per task, 32 per target] filled the cache with {filled.embedded} "
          f"stand-in vectors in {fill:.1f} s", flush=True)
    needed = sum(min(c.info.num_instances, 100) for c in filled.candidates) + min(
        filled.targets[0].inputs.__len__(), 32)  # the vectors a warm full-sample select reads
    projected = needed / rate
    print(f"baseline: embedding those {needed} texts cold at {rate:.1f} texts/s would take "
          f"{projected / 3600:.1f} h")
    for method in ("semb", "retrieval"):
        seconds, result = timed(lambda m=method: select(m, RandomEncoder()))
        assert result.embedded == 0
        print(f"warm {method:9s} select over {len(result.candidates)} tasks: {seconds:.2f} s "
              f"(target < 5 s; {projected / seconds:,.0f}x faster than cold)", flush=True)
    seconds, result = timed(lambda: select("ngram"), repeat=2)
    print(f"ngram     select over {len(result.candidates)} tasks: {seconds:.2f} s (no model, no cache)")


if __name__ == "__main__":
    main()
