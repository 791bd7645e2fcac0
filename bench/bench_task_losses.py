"""What the per-task training loss (losses.jsonl) costs per training step: no second forward pass, only a
cross-entropy over the trained tokens of the logits the forward already made, and a per-task sum.

Times a training micro-step (forward + backward) of a small Llama on packed batches of the bundled sample,
with and without `TaskLossCallback.add` on its logits, in the same process, alternating, and prints the
medians and their ratio. CPU by default; `--device cuda` on a GPU machine.

    python bench/bench_task_losses.py [--steps 20] [--hidden 256] [--layers 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from mixtune.mixtures import load_mixture, plan_mixture
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig
    from mixtune.train.data import stream_examples
    from mixtune.train.packing import PackingCollator
    from mixtune.train.task_losses import TaskLossCallback, token_task_ids

    plan = plan_mixture(load_mixture(REPO / "data_mixtures" / "quickstart.yaml"))
    config = {"model_type": "llama", "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden,
              "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": args.max_length}
    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=config))
    model.to(args.device).train()
    collate = PackingCollator(tokenizer, max_length=args.max_length)
    index = {(t.source, t.name): i for i, t in enumerate(plan.tasks)}
    batches = []
    for s in range(args.steps):
        examples = stream_examples(plan, list(range(s * args.batch, (s + 1) * args.batch)))
        batch = collate(examples)
        batch["ids"] = token_task_ids(batch["labels"], [index[(e["source"], e["task"])] for e in examples],
                                      collate.last_layout)
        batches.append({k: v.to(args.device) for k, v in batch.items()})
    callback = TaskLossCallback(plan, "/nonexistent")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step(batch: dict, with_tasks: bool) -> float:
        sync()
        start = time.perf_counter()
        inputs = {k: v for k, v in batch.items() if k != "ids"}
        out = model(**inputs)
        if with_tasks:
            callback.add(out.logits, batch["labels"], batch["ids"], shift=True)
        out.loss.backward()
        sync()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(batches[0], True)  # warm-up
    plain, tasks = [], []
    for batch in batches:
        plain.append(step(batch, False))
        tasks.append(step(batch, True))
    tokens = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    rows = batches[0]["input_ids"].shape
    print(f"device {args.device}, hidden {args.hidden} x {args.layers} layers, vocab {model.config.vocab_size}, "
          f"{args.batch} examples/micro-batch packed into ~{rows[0]} x {rows[1]}, {tokens:.0f} trained tokens")
    a, b = statistics.median(plain), statistics.median(tasks)
    print(f"micro-step median: plain {a * 1000:.1f} ms, with per-task losses {b * 1000:.1f} ms, "
          f"ratio {b / a:.3f} (overhead {100 * (b / a - 1):+.1f}%) over {args.steps} steps")


if __name__ == "__main__":
    main()
