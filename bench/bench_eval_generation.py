"""Generation throughput of the evaluator: batched, length-sorted greedy generation vs one at a time.

Tiny Llama (hidden 64, 2 layers, MiniLM tokenizer) on CPU, fp32; inputs are the bundled SuperNI
sample's held-out prompts (definition + 2 positive examples, cut to 256 tokens as Tk-Instruct's
max_source_length does), so lengths vary as in a real evaluation. Both runs generate the same
greedy outputs (checked). Run: python bench/bench_eval_generation.py [--n 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def superni_prompts(tokenizer, n: int, max_source_length: int = 256) -> list[str]:
    """`n` held-out prompts of the bundled sample, task by task, in the evaluation's order."""
    from mixtune.eval.evalsets import build_eval_set
    from mixtune.tasks.collection import open_collection
    from mixtune.tasks.matching import resolve_tasks

    collection = open_collection()
    per_task = max(1, -(-n // len(resolve_tasks(collection))))
    records = build_eval_set(collection, max_instances=per_task, setting="def_pos2", tokenizer=tokenizer,
                             max_source_length=max_source_length)
    return [r["prompt"] for r in records][:n]


def bench_generation(n: int = 64, batch_size: int = 16, max_new_tokens: int = 16,
                     repeats: int = 3) -> dict[str, float]:
    """Examples/s of the batched length-sorted evaluator and of one-at-a-time generation; prints the ratio."""
    import torch

    from mixtune.eval.generation import generate
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    torch.manual_seed(0)
    model, tokenizer, kind = load_model_and_tokenizer(ModelConfig(config=MODEL, dtype="fp32"))
    model.eval()
    prompts = superni_prompts(tokenizer, n)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    generate(model, tokenizer, prompts[:4], batch_size=4, max_new_tokens=4, progress=False)  # warm-up

    def timed(fn):  # best of `repeats`: the least disturbed by other load on the machine
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return out, min(times)

    batched, t_batched = timed(lambda: generate(model, tokenizer, prompts, batch_size=batch_size,
                                                max_new_tokens=max_new_tokens, progress=False))
    # batches of consecutive prompts (file order): no global length sort
    unsorted, t_unsorted = timed(lambda: [
        text for i in range(0, len(prompts), batch_size)
        for text in generate(model, tokenizer, prompts[i:i + batch_size], batch_size=batch_size,
                             max_new_tokens=max_new_tokens, progress=False)])

    start = time.perf_counter()
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=max_new_tokens, progress=False)[0]
              for p in prompts]
    t_single = time.perf_counter() - start

    result = {
        "inputs": len(prompts),
        "prompt_tokens_median": statistics.median(lengths),
        "prompt_tokens_min": min(lengths),
        "prompt_tokens_max": max(lengths),
        "batched_examples_per_s": len(prompts) / t_batched,
        "unsorted_examples_per_s": len(prompts) / t_unsorted,
        "single_examples_per_s": len(prompts) / t_single,
        "ratio": t_single / t_batched,
        "same_outputs": float(batched == single == unsorted),
    }
    print(f"inputs: {len(prompts)} held-out SuperNI prompts (def_pos2, <=256 tokens; median "
          f"{result['prompt_tokens_median']:.0f}, min {min(lengths)}, max {max(lengths)}), "
          f"max_new_tokens {max_new_tokens}, torch threads {torch.get_num_threads()}")
    print(f"batched length-sorted (batch {batch_size}): {result['batched_examples_per_s']:.2f} examples/s "
          f"({t_batched:.1f} s, best of {repeats})")
    print(f"batched, file order (batch {batch_size}): {result['unsorted_examples_per_s']:.2f} examples/s "
          f"({t_unsorted:.1f} s, best of {repeats})")
    print(f"one at a time:                     {result['single_examples_per_s']:.2f} examples/s ({t_single:.1f} s)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"ratio: {result['ratio']:.2f}x (target >= 3x); identical outputs: {batched == single == unsorted}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each batched mode (best kept)")
    a = parser.parse_args()
    bench_generation(a.n, a.batch_size, a.max_new_tokens, a.repeats)
