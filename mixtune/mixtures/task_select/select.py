"""`select_for_targets`: score every candidate task against the targets and keep the best k."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixtune.errors import ConfigError
from mixtune.mixtures.sampler import capped_pool
from mixtune.mixtures.task_select.pool import Candidate, Pool, Target
from mixtune.tasks.cache import cache_root

log = logging.getLogger(__name__)
METHODS = ("semb", "retrieval", "ngram")
SAMPLE_SEED = 0  # the instance sample of a task is a pure function of (task name, its size, the cap)


@dataclass
class Selection:
    """Scores of every candidate against every target, and the top k (best first, ties by name)."""

    method: str
    targets: list[Target]
    candidates: list[Candidate]
    scores: np.ndarray  # (candidates × targets)
    k: int
    encoder: str | None = None
    embedded: int = 0  # texts embedded by this run (0 when every vector came from the cache)
    pool_description: str = ""
    order: list[int] = field(init=False)

    def __post_init__(self) -> None:
        combined = self.combined
        self.order = sorted(range(len(self.candidates)), key=lambda i: (-combined[i], self.candidates[i].task))

    @property
    def combined(self) -> np.ndarray:
        """One score per candidate: the mean of its scores over the targets."""
        return self.scores.mean(axis=1)

    @property
    def selected(self) -> list[int]:
        """Indices (into `candidates`) of the k best tasks, best first."""
        return self.order[:self.k]


def select_for_targets(pool: Pool, targets: list[Target], method: str, k: int, *, max_instances: int = 100,
                       target_instances: int = 32, neighbors: int = 10, encoder=None,
                       cache_dir: str | Path | None = None) -> Selection:
    """Rank the pool's candidates (targets left out) for `targets` with `method` and keep `k`.

    Candidates contribute at most `max_instances` inputs each, targets at most `target_instances`;
    `encoder` (semb, retrieval) defaults to the shipped MiniLM `SentenceEncoder`.
    """
    from mixtune.mixtures.task_select import methods

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}", field="--method", hint=f"use one of {', '.join(METHODS)}")
    names = {t.name for t in targets}
    candidates, rows = [], []
    for c in pool.candidates:
        if c.task in names:
            continue
        n = c.info.num_instances or c.collection.instances(c.task).num_rows
        if n == 0:
            log.info("candidate %s has no instances; left out", c.task)
            continue
        candidates.append(c)
        rows.append(capped_pool(n, max_instances, SAMPLE_SEED, c.task))
    if k > len(candidates):
        raise ConfigError(f"--k {k} is larger than the {len(candidates)} candidate tasks of {pool.description}",
                          field="--k", hint=f"use --k {len(candidates)} or fewer, or a larger collection")

    def texts(c: Candidate, r: np.ndarray) -> Callable[[], list[str]]:
        return lambda: c.collection.instances(c.task).column("input").take(pa.array(r)).to_pylist()

    target_rows = [capped_pool(len(t.inputs), target_instances, SAMPLE_SEED, t.name) for t in targets]
    target_texts = [[t.inputs[i] for i in r.tolist()] for t, r in zip(targets, target_rows, strict=True)]
    embedded, encoder_name = 0, None
    if method == "ngram":
        scores = methods.ngram_scores([texts(c, r)() for c, r in zip(candidates, rows, strict=True)], target_texts)
    else:
        from mixtune.mixtures.task_select.embedding_cache import (
            EmbeddingRequest,
            cached_embeddings,
            embeddings_dir,
            task_group,
        )
        from mixtune.mixtures.task_select.encoder import SentenceEncoder

        encoder = encoder or SentenceEncoder()
        encoder_name = encoder.name
        requests = [EmbeddingRequest(task_group(c.collection, c.task), c.collection.content_key(c.task), r,
                                     texts(c, r)) for c, r in zip(candidates, rows, strict=True)]
        requests += [EmbeddingRequest(t.group, t.version, np.asarray(t.rows, np.int64)[r], lambda x=x: x)
                     for t, r, x in zip(targets, target_rows, target_texts, strict=True)]
        vectors, embedded = cached_embeddings(embeddings_dir(cache_root(cache_dir), encoder.key), requests,
                                              encoder.encode)
        cand, targ = vectors[:len(candidates)], vectors[len(candidates):]
        scores = (methods.semb_scores(cand, targ) if method == "semb"
                  else methods.retrieval_scores(cand, targ, neighbors))
    return Selection(method, targets, candidates, scores, k, encoder=encoder_name, embedded=embedded,
                     pool_description=pool.description)
