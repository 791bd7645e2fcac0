"""Padding to the batch maximum vs packing, on SuperNI-like lengths, tiny causal model on CPU.

The examples are instances of the bundled SuperNI sample's training tasks with Tk-Instruct's
"definition + 2 positive examples" encoding (mixtune.encodings.encode_prompt), shuffled with a
seed. Both runs get the same examples in the same batches (`--batch-size` examples per optimizer
step) and do forward + backward + AdamW step; their steps are interleaved so that load on the
machine hits both alike. Reported per run:

* useful tokens/s: tokens of real examples (prompt + completion + EOS, not padding) per second;
* useful fraction per batch: useful tokens / tokens computed (rows x row length);
* trained tokens/s: tokens with a label (completion + EOS).

    python bench/bench_train.py [--examples 96] [--batch-size 16] [--max-length 1024] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from mixtune.encodings import EncodingSpec, encode_prompt
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig
from mixtune.tasks import open_collection
from mixtune.train.collators import IGNORE_INDEX, CompletionOnlyCollator
from mixtune.train.packing import PackingCollator


def superni_examples(n: int, seed: int) -> list[dict]:
    """n (prompt, completion) examples from the bundled sample's training tasks, def + 2 pos encoding."""
    coll = open_collection("superni", "bundled")
    split = coll.split()
    held_out = split.held_out if split is not None else frozenset()
    spec = EncodingSpec(definition=True, pos_examples=2)
    pairs = [(task, row) for task in coll.task_names() if task not in held_out
             for row in range(len(coll.instances(task)))]
    random.Random(seed).shuffle(pairs)
    out = []
    for task, row in pairs[:n]:
        inst = coll.instance(task, row)
        out.append({"prompt": encode_prompt(coll.info(task), inst.input, spec), "completion": inst.output[0],
                    "task": task})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step (both runs)")
    ap.add_argument("--max-length", type=int, default=1024, help="truncation length and packed row length")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--strategy", default="balanced", choices=["balanced", "bfd"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as Markdown here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    examples = superni_examples(args.examples, args.seed)
    cfg = ModelConfig(config={"model_type": "llama", "hidden_size": args.hidden,
                              "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers,
                              "num_attention_heads": 4, "num_key_value_heads": 4})
    runs = {}
    for name in ("padded", "packed"):
        torch.manual_seed(args.seed)
        model, tok, _ = load_model_and_tokenizer(cfg)
        model.train()
        coll = (CompletionOnlyCollator(tok, max_length=args.max_length) if name == "padded"
                else PackingCollator(tok, max_length=args.max_length, strategy=args.strategy))
        runs[name] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-4), "coll": coll,
                      "seconds": 0.0, "cpu_seconds": 0.0, "useful": 0, "trained": 0, "computed": 0,
                      "fractions": [], "losses": []}
    batches = [examples[i:i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
    # one warm-up step each (not timed), then the timed steps, interleaved
    for step, feats in enumerate([batches[0], *batches]):
        for run in runs.values():
            batch = run["coll"](feats)
            if "position_ids" in batch:
                stats = run["coll"].last_stats
                useful, computed = stats.useful_tokens, stats.total_tokens
            else:
                useful, computed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
            trained = int((batch["labels"] != IGNORE_INDEX).sum())
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = run["model"](**batch).loss
            loss.backward()
            run["opt"].step()
            run["opt"].zero_grad(set_to_none=True)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if step == 0:
                continue
            run["seconds"] += elapsed
            run["cpu_seconds"] += cpu
            run["useful"] += useful
            run["trained"] += trained
            run["computed"] += computed
            run["fractions"].append(useful / computed)
            run["losses"].append(loss.item())

    lines = [
        f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}.",
        f"Data: {len(examples)} instances of the bundled SuperNI sample's training tasks, def + 2 positive "
        f"examples encoding, MiniLM WordPiece tokens, truncated to {args.max_length} (prompt cut from the left).",
        f"Model: Llama from config, hidden {args.hidden}, {args.layers} layers, vocab {len(tok)}, fp32, sdpa; "
        f"{args.batch_size} examples per step, forward + backward + AdamW, {len(batches)} timed steps per run.",
        "",
        "| run | useful tokens/s | useful tokens per CPU-s | trained tokens/s | useful fraction (mean / min per "
        "batch) | tokens computed | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    rates, cpu_rates = {}, {}
    for name, run in runs.items():
        rates[name] = run["useful"] / run["seconds"]
        cpu_rates[name] = run["useful"] / run["cpu_seconds"]
        lines.append(f"| {name} | {rates[name]:.0f} | {cpu_rates[name]:.0f} | {run['trained'] / run['seconds']:.1f} | "
                     f"{statistics.mean(run['fractions']):.3f} / {min(run['fractions']):.3f} | "
                     f"{run['computed']} | {run['seconds'] / len(batches):.2f} |")
    ratio = rates["packed"] / rates["padded"]
    cpu_ratio = cpu_rates["packed"] / cpu_rates["padded"]
    lines += ["", f"Packed / padded useful tokens/s: **{ratio:.2f}x** wall clock, {cpu_ratio:.2f}x per CPU-second "
              "(target >= 1.5x); packed useful fraction "
              f"mean {statistics.mean(runs['packed']['fractions']):.3f} (target >= 0.95), strategy {args.strategy}.",
              f"Same loss path: mean loss padded {statistics.mean(runs['padded']['losses']):.4f}, "
              f"packed {statistics.mean(runs['packed']['losses']):.4f}."]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text("## bench_train: padding vs packing\n\nCommand: `python bench/bench_train.py "
                            f"--examples {args.examples} --batch-size {args.batch_size} --max-length "
                            f"{args.max_length}`\n\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
