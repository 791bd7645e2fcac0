"""Benchmark the mixture builder on a synthetic SuperNI-size collection, against a straightforward baseline.

A synthetic SuperNI-format collection (1,600 tasks, log-normal sizes, >= 800,000 instances; see
bench/synthetic_superni.py) is written once, then each phase runs in its own child process so that its
peak RSS is its own:

  (a) index     first `open_collection` on a cold cache (parse every task file once into Arrow)
  (b) reopen    `open_collection` again with the warm cache
  (c) build     `load_mixture` + `plan_mixture` + `build_mixture`: N examples of the default split's
                train tasks, cap 500, temperature 2, Tk-Instruct definition + 2 positive examples; one
                child per N of `--examples` (peak RSS of each build on its own)
  floor         the physical limit: pyarrow writes the same record batches (the built shards, memory-
                mapped) to new Arrow files, nothing else; the build is reported as a multiple of it
  baseline      (N <= --baseline-max) json-load every train task, take the same capped pools, one
                `datasets.Dataset` per task, `datasets.interleave_datasets` with the same probabilities
                and seed, the same prompt formatting, `save_to_disk`: map-style (`all_exhausted`, then
                the first N); with --iterable-baseline also iterable (`.take(N)`, ~10 minutes at 100k)

Wall and CPU seconds (user + system, from rusage) are measured inside the child (interpreter start-up
and imports excluded). The load average is printed before and after: on a shared machine wall times
stretch, and the CPU-second ratios are the steadier comparison.

    python bench/bench_mixture.py [--work /tmp/mixtune-bench] [--examples 100000,1000000,5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIXTURE = """\
name: bench
seed: 0
total_examples: {examples}
temperature: {temperature}
max_instances_per_task: {cap}
sources:
  - name: synthetic
    type: superni
    path: {root}
    split: default
    encoding: {{definition: true, pos_examples: 2}}
"""


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def phase_index(args: argparse.Namespace) -> dict:
    from mixtune.tasks import open_collection

    start, cpu = time.perf_counter(), _cpu_s()
    collection = open_collection("superni", args.root, cache_dir=args.cache)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": _cpu_s() - cpu, "tasks": len(collection.task_names())}


def phase_build(args: argparse.Namespace) -> dict:
    import datasets  # noqa: F401  (imported before timing, as in the baseline)

    from mixtune.mixtures import build_mixture, load_mixture, plan_mixture

    start, cpu = time.perf_counter(), _cpu_s()
    plan = plan_mixture(load_mixture(args.mixture), cache_dir=args.cache)
    planned, planned_cpu = time.perf_counter(), _cpu_s()
    build_mixture(plan, args.out)
    end, end_cpu = time.perf_counter(), _cpu_s()
    json_path = Path(args.out) / "plan_rates.json"
    json_path.write_text(json.dumps({"tasks": [[t.name, t.rate, t.pool.tolist()] for t in plan.tasks]}))
    shards = sorted(Path(args.out).glob("data-*.arrow"))
    return {"wall_s": end - start, "plan_s": planned - start, "write_s": end - planned, "cpu_s": end_cpu - cpu,
            "write_cpu_s": end_cpu - planned_cpu, "examples": len(plan),
            "tasks": len(plan.tasks), "shards": len(shards), "bytes": sum(f.stat().st_size for f in shards)}


def phase_floor(args: argparse.Namespace) -> dict:
    """pyarrow alone: write the built shards' record batches (memory-mapped) to new Arrow stream files.

    Best of 3 runs (1 above 1 GB), each into a fresh folder: the fastest write is the floor."""
    import pyarrow as pa

    shards = sorted(Path(args.plan_out).glob("data-*.arrow"))
    size = sum(f.stat().st_size for f in shards)
    walls, cpus = [], []
    for run in range(3 if size < 1e9 else 1):
        target = Path(args.out) / str(run)
        target.mkdir(parents=True)
        start, cpu = time.perf_counter(), _cpu_s()
        for shard in shards:
            with pa.memory_map(str(shard)) as source, pa.OSFile(str(target / shard.name), "wb") as sink:
                reader = pa.ipc.open_stream(source)
                with pa.ipc.new_stream(sink, reader.schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_s() - cpu)
        written = sum(f.stat().st_size for f in target.glob("data-*.arrow"))
        shutil.rmtree(target)
    return {"wall_s": min(walls), "walls_s": walls, "cpu_s": min(cpus), "bytes": written}


def phase_baseline(args: argparse.Namespace) -> dict:
    """The straightforward way: json-load, per-task datasets, interleave_datasets, format, save_to_disk."""
    import datasets

    from mixtune.encodings import EncodingSpec, encode_prompt
    from mixtune.tasks.schema import Demonstration, TaskInfo

    # same tasks, rates and capped pools as the mixtune plan (read from the build phase's output)
    plan = json.loads((Path(args.plan_out) / "plan_rates.json").read_text())
    start, cpu = time.perf_counter(), _cpu_s()
    spec = EncodingSpec(definition=True, pos_examples=2)
    infos, per_task = {}, []
    for name, _, pool in plan["tasks"]:
        with open(Path(args.root) / "tasks" / f"{name}.json", encoding="utf-8") as f:
            data = json.load(f)
        instances = data["Instances"]
        demos = tuple(Demonstration(d["input"], d["output"], d.get("explanation", ""))
                      for d in data["Positive Examples"])
        infos[name] = TaskInfo(name=name, definition=data["Definition"][0], positive_examples=demos,
                               categories=tuple(data["Categories"]), num_instances=len(instances))
        rows = [instances[i] for i in pool]
        per_task.append(datasets.Dataset.from_dict({
            "task": [name] * len(rows), "id": [r["id"] for r in rows], "input": [r["input"] for r in rows],
            "output": [r["output"] for r in rows]}))
    loaded = time.perf_counter()
    probabilities = [rate for _, rate, _ in plan["tasks"]]
    if args.phase == "baseline":  # iterable: stops after exactly `examples`
        mixed = datasets.interleave_datasets([d.to_iterable_dataset() for d in per_task],
                                             probabilities=probabilities, seed=0,
                                             stopping_strategy="all_exhausted").take(args.examples)
    else:  # map-style: the index runs until every task is exhausted; keep the first `examples`
        mixed = datasets.interleave_datasets(per_task, probabilities=probabilities, seed=0,
                                             stopping_strategy="all_exhausted")
        mixed = mixed.select(range(min(args.examples, len(mixed))))
    records = []
    for i, ex in enumerate(mixed):
        info = infos[ex["task"]]
        records.append({"prompt": encode_prompt(info, ex["input"], spec), "completion": ex["output"][0],
                        "task": ex["task"], "category": info.category, "source": "synthetic", "position": i,
                        "instance_id": ex["id"], "references": ex["output"]})
    datasets.Dataset.from_list(records).save_to_disk(args.out)
    end = time.perf_counter()
    return {"wall_s": end - start, "cpu_s": _cpu_s() - cpu, "load_s": loaded - start, "examples": len(records)}


PHASES = {"index": phase_index, "reopen": phase_index, "build": phase_build, "floor": phase_floor,
          "baseline": phase_baseline, "baseline_map": phase_baseline}


def run_child(phase: str, **kwargs: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase]
    for key, value in kwargs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mixtune-bench"))
    parser.add_argument("--tasks", type=int, default=1600)
    parser.add_argument("--instances", type=int, default=800_000)
    parser.add_argument("--examples", default="100000",
                        help="comma-separated mixture sizes, one build (and floor) each, e.g. 100000,1000000")
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="run the interleave_datasets baseline for sizes up to this")
    parser.add_argument("--cap", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--iterable-baseline", action="store_true",
                        help="also run the iterable interleave_datasets baseline (slow: ~10 min at 100k)")
    # child-process arguments
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--mixture", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--plan-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        args.examples = int(args.examples)
        result = PHASES[args.phase](args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    sys.path.insert(0, str(HERE))
    from synthetic_superni import write_synthetic_collection

    sizes = [int(x) for x in args.examples.split(",")]
    work = args.work
    root = work / f"superni-{args.tasks}-{args.instances}"
    if not (root / "splits" / "default" / "train_tasks.txt").exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic_collection(root, num_tasks=args.tasks, total_instances=args.instances)
        print(f"wrote the synthetic collection in {time.perf_counter() - start:.1f} s", flush=True)
    files = list((root / "tasks").glob("*.json"))
    size_gb = sum(f.stat().st_size for f in files) / 1e9
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    load_before = _load()
    results: dict[str, dict] = {
        "index": run_child("index", root=root, cache=cache),
        "reopen": run_child("reopen", root=root, cache=cache),
    }
    labels = {"index": "(a) first indexing", "reopen": "(b) warm re-open"}
    for n in sizes:
        mixture = work / f"bench-{n}.yaml"
        mixture.write_text(MIXTURE.format(examples=n, temperature=args.temperature, cap=args.cap, root=root))
        out, floor_out, base_out = work / "built", work / "floor", work / "baseline"
        for folder in (out, floor_out, base_out):
            shutil.rmtree(folder, ignore_errors=True)
        results[f"build_{n}"] = run_child("build", root=root, cache=cache, mixture=mixture, out=out)
        labels[f"build_{n}"] = f"(c) build {n:,}"
        results[f"floor_{n}"] = run_child("floor", plan_out=out, out=floor_out)
        labels[f"floor_{n}"] = f"    pyarrow write floor {n:,}"
        shutil.rmtree(floor_out, ignore_errors=True)
        if not args.skip_baseline and n <= args.baseline_max:
            for phase in ("baseline_map", "baseline") if args.iterable_baseline else ("baseline_map",):
                shutil.rmtree(base_out, ignore_errors=True)
                results[f"{phase}_{n}"] = run_child(phase, root=root, out=base_out, plan_out=out, examples=n)
                labels[f"{phase}_{n}"] = (f"    baseline {n:,}, " +
                                          ("map-style interleave" if phase == "baseline_map" else "iterable"))
            shutil.rmtree(base_out, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    load_after = _load()

    first = results[f"build_{sizes[0]}"]
    print(f"\ncollection: {len(files)} task files, {args.instances:,} instances requested, {size_gb:.2f} GB of JSON; "
          f"mixture: {first['tasks']} train tasks, cap {args.cap}, temperature {args.temperature}; "
          f"{os.cpu_count()} CPU cores; load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"{'phase':<42}{'wall (s)':>10}{'CPU (s)':>10}{'peak RSS (MB)':>15}")
    for key, r in results.items():
        print(f"{labels[key]:<42}{r['wall_s']:>10.2f}{r['cpu_s']:>10.2f}{r['peak_rss_mb']:>15.0f}")
    for n in sizes:
        b, floor = results[f"build_{n}"], results[f"floor_{n}"]
        print(f"build {n:,}: plan {b['plan_s']:.2f} s, format + write {b['write_s']:.2f} s, "
              f"{b['bytes'] / 1e9:.2f} GB in {b['shards']} shard(s), peak RSS {b['peak_rss_mb']:.0f} MB")
        print(f"  vs pyarrow write floor ({floor['wall_s']:.2f} s, {floor['cpu_s']:.2f} CPU s): format + write "
              f"{b['write_s'] / floor['wall_s']:.2f}x wall, {b['write_cpu_s'] / floor['cpu_s']:.2f}x CPU; "
              f"plan + format + write {b['wall_s'] / floor['wall_s']:.2f}x wall, "
              f"{b['cpu_s'] / floor['cpu_s']:.2f}x CPU")
        for phase in ("baseline_map", "baseline"):
            base = results.get(f"{phase}_{n}")
            if base is None:
                continue
            print(f"  {labels[f'{phase}_{n}'].strip()}: json-load + per-task datasets {base['load_s']:.2f} s, "
                  f"interleave + format + write {base['wall_s'] - base['load_s']:.2f} s")
            print(f"    build speed-up: {base['wall_s'] / b['wall_s']:.1f}x wall, "
                  f"{base['cpu_s'] / b['cpu_s']:.1f}x CPU "
                  f"(with first indexing: "
                  f"{base['wall_s'] / (b['wall_s'] + results['index']['wall_s']):.1f}x); "
                  f"peak RSS ratio: {base['peak_rss_mb'] / b['peak_rss_mb']:.1f}x")
    print(json.dumps({"load_before": load_before, "load_after": load_after, **results}))


if __name__ == "__main__":
    main()
