"""Precision@k of `mixture select`: how often a method's top-k tasks share the target's category, vs random.

Leave-one-out over a collection's training tasks: each task whose category has at least one other
candidate is a target once; the candidates are the other non-held-out tasks. precision@k is the share
of the top k with the target's category; random selection's is its exact expectation, (tasks of the
target's category among the candidates) / (candidates). Means over targets are printed as a Markdown
table. Held-out targets are reported too: how many of them have any candidate of their category.

    python bench/select_precision.py bundled
    python bench/select_precision.py /tmp/synth --targets 100 --max-instances 2 --target-instances 2
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

KS = (1, 5, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collection", help="a SuperNI folder or `bundled`")
    parser.add_argument("--methods", default="semb,retrieval,ngram")
    parser.add_argument("--targets", type=int, default=0, help="use the first N eligible targets (0: all)")
    parser.add_argument("--max-instances", type=int, default=100)
    parser.add_argument("--target-instances", type=int, default=32)
    args = parser.parse_args()
    from mixtune.mixtures.task_select import collection_pool, select_for_targets
    from mixtune.mixtures.task_select.pool import Target
    from mixtune.mixtures.task_select.select import Selection

    pool = collection_pool(args.collection)
    categories = Counter(c.category for c in pool.candidates)
    eligible = [c for c in pool.candidates if categories[c.category] >= 2]
    if args.targets:
        eligible = eligible[: args.targets]
    coll = pool.collections[0]
    held = sorted(t for t in pool.held_out if t in coll)
    covered = [t for t in held if categories[coll.info(t).category] > 0]
    print(f"{pool.description}: {len(pool.candidates)} candidates in {len(categories)} categories; "
          f"{len(eligible)} leave-one-out targets; {len(covered)} of {len(held)} held-out tasks have a "
          f"candidate of their own category")
    from mixtune.mixtures.task_select.embedding_cache import task_group

    # named `loo:<task>` so the targets stay candidates of one another; each is left out of its own ranking
    targets = []
    for c in eligible:
        inputs = c.collection.instances(c.task).column("input").to_pylist()
        targets.append(Target(f"loo:{c.task}", tuple(inputs), tuple(range(len(inputs))),
                              task_group(c.collection, c.task), c.collection.content_key(c.task), c.category))
    random = {k: np.mean([(categories[t.category] - 1) / (len(pool.candidates) - 1) for t in targets]) for k in KS}
    rows = {"random (expected)": random}
    for method in args.methods.split(","):
        start = time.perf_counter()
        # one call scores every candidate against every target; each target's own row is then left out
        scores = select_for_targets(pool, targets, method, 1, max_instances=args.max_instances,
                                    target_instances=args.target_instances)
        precision = {k: [] for k in KS}
        for j, t in enumerate(targets):
            keep = [i for i, c in enumerate(scores.candidates) if c.task != t.name[4:]]
            one = Selection(method, [t], [scores.candidates[i] for i in keep], scores.scores[keep][:, [j]], max(KS))
            cats = [one.candidates[i].category for i in one.selected]
            for k in KS:
                precision[k].append(sum(c == t.category for c in cats[:k]) / k)
        rows[method] = {k: float(np.mean(v)) for k, v in precision.items()}
        print(f"{method}: {time.perf_counter() - start:.1f} s (embedded {scores.embedded} texts)", flush=True)
    print("\n| method | " + " | ".join(f"P@{k}" for k in KS) + " |\n|---|" + "---|" * len(KS))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in KS) + " |")


if __name__ == "__main__":
    main()
