"""Score a predictions set in chunks, in one process or a pool of forked processes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

Chunk = tuple[list[str], list[list[str]], str]
ChunkScorer = Callable[[Chunk], tuple[list[float], list[float]]]


def score_in_chunks(score_chunk: ChunkScorer, predictions: Sequence[str], references: Sequence[Sequence[str]],
                    tokenizer: str, *, workers: int | None = None,
                    prepare: Callable[[], Any] | None = None) -> tuple[list[float], list[float]]:
    """`score_chunk` over (predictions, references, tokenizer) chunks, concatenated in order.

    `workers` processes (default 1; at most one per 1,000 instances) each score one contiguous chunk.
    `prepare` runs before forking, so the workers inherit what it loads (rouge-score, nltk).
    """
    n = len(predictions)
    workers = max(1, min(workers or 1, n // 1000 or 1))
    if workers == 1:
        return score_chunk((list(predictions), [list(r) for r in references], tokenizer))
    size = math.ceil(n / workers)
    chunks = [
        (list(predictions[i:i + size]), [list(r) for r in references[i:i + size]], tokenizer)
        for i in range(0, n, size)
    ]
    em: list[float] = []
    rl: list[float] = []
    import multiprocessing

    # fork: workers inherit the loaded rouge-score/nltk (importing nltk alone takes seconds) and need no
    # `if __name__ == "__main__"` guard in the caller's script; spawn where fork does not exist.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if prepare is not None:
        prepare()  # load before forking
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        for part_em, part_rl in pool.map(score_chunk, chunks):
            em.extend(part_em)
            rl.extend(part_rl)
    return em, rl
