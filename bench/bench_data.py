"""Tokens/s the data path delivers per CPU worker, against what one GPU consumes.

The data path is what a DataLoader worker runs for every micro-batch of `mixtune train`: stream
positions -> examples from the mixture plan (Tk-Instruct encoding) -> prompt ids in token space
(mixtune.tokenization) -> collation (completion-only padding, or packing in each layout). It runs
here in one process (= one worker), on the bundled sample mixture (definition + 2 positive
examples, as the sample's recipes), with a byte-level BPE tokenizer trained from the sample (the
tokenizer kind of Llama/Qwen models; `--tokenizer minilm` for WordPiece).

Reported: useful tokens/s (tokens of real examples, not padding) for each collation, and the ratio
to what one H100 training a ~1B model at 40% MFU consumes: 0.4 x 989e12 / (6 x 1e9) = 66k tokens/s.
Target: one worker >= 35k tokens/s, so two workers per GPU never starve it.

    python bench/bench_data.py [--micro-batch 16] [--batches 30] [--max-length 2048] [--tokenizer bpe|minilm]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_TOKENS_PER_S = 0.4 * 989e12 / (6 * 1e9)  # H100 bf16 dense peak, 40% MFU, 1B parameters
TARGET_PER_WORKER = 35_000


def tokenizer_source(kind: str, folder: Path) -> str:
    if kind == "minilm":
        return "minilm"
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_bpe_tokenizer  # the BPE the tests train from the sample

    return str(build_bpe_tokenizer(folder / "bpe"))


def measure(name: str, collate, plan, args) -> float:
    from mixtune.train.data import StreamCollator

    stream = StreamCollator(plan, collate)
    stream(list(range(args.micro_batch)))  # warm caches (task tables, lru caches)
    tokens, start = 0, time.perf_counter()
    for b in range(1, args.batches + 1):
        positions = list(range(b * args.micro_batch, (b + 1) * args.micro_batch))
        batch = stream(positions)
        stats = getattr(collate, "last_stats", None)  # packing: tokens of real examples
        tokens += stats.useful_tokens if stats is not None else int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    rate = tokens / seconds
    print(f"{name:<34} {rate:>10,.0f} tokens/s   x{rate / TARGET_PER_WORKER:5.2f} of the 35k target   "
          f"x{rate / GPU_TOKENS_PER_S:5.2f} of one H100 (66k)   ({tokens:,} tokens in {seconds:.2f} s)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--tokenizer", choices=["bpe", "minilm"], default="bpe")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture
    from mixtune.models.tokenizer import load_tokenizer
    from mixtune.train.collators import CompletionOnlyCollator
    from mixtune.train.packing import PackingCollator

    torch.set_num_threads(1)  # one worker = one core
    plan = plan_mixture(load_mixture(REPO / "data_mixtures" / "superni_sample.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(tokenizer_source(args.tokenizer, Path(tmp)))
    tok.model_max_length = args.max_length
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}; "
          f"torch {torch.__version__}; tokenizer {args.tokenizer}; micro-batch {args.micro_batch}, "
          f"max_length {args.max_length}, {args.batches} batches; one process (= one DataLoader worker)")
    n = args.max_length
    rates = {
        "completion-only (padded)": measure("completion-only (padded)", CompletionOnlyCollator(tok, max_length=n),
                                            plan, args),
        "packing, padding-free (flash)": measure("packing, padding-free (flash)",
                                                 PackingCollator(tok, max_length=n, layout="padding_free"), plan, args),
        "packing, block mask (flex)": measure("packing, block mask (flex)",
                                              PackingCollator(tok, max_length=n, layout="block_mask"), plan, args),
        "packing, 4D bool mask (sdpa)": measure("packing, 4D bool mask (sdpa)", PackingCollator(tok, max_length=n),
                                                plan, args),
    }
    slowest = min(rates.values())
    print(f"slowest path: {slowest:,.0f} tokens/s per worker; workers per H100 at 66k tokens/s: "
          f"{GPU_TOKENS_PER_S / slowest:.2f}")


if __name__ == "__main__":
    main()
