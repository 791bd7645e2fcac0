"""The three scores of `mixture select`: one number per (candidate task, target); higher is closer.

- `semb_scores` (SEmb, Poth et al. 2021): a task's vector is the mean of its instances' sentence
  embeddings; the score is the cosine similarity of the candidate's and the target's vectors.
- `retrieval_scores` (retrieval of experts, Jang et al. 2023; TaskShop's backbone, Kim et al. 2023):
  every target instance retrieves its `neighbors` nearest candidate instances (cosine) and gives each
  one 1/`neighbors` of a vote for that instance's task; the score is the task's share of the votes.
- `ngram_scores` (DSIR, Xie et al. 2023): hashed word unigrams and bigrams (10,000 buckets) give a
  bag-of-n-grams model of the target and of the raw data (all candidates' instances); an instance's
  importance weight is log p_target(x) - log p_raw(x), and a task's score is the summed weight of its
  instances per n-gram they contain (the expected per-n-gram log ratio under the task's n-grams).
  The raw model is add-one smoothed as in DSIR; the target model, estimated from a few dozen inputs,
  is smoothed towards the raw model (Dirichlet prior with as much mass as the target's own n-grams):
  with add-one smoothing every bucket that is rare in the raw data looked target-like, so tasks with
  rare words ranked first (docs/selection.md gives both variants' precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NGRAM_BUCKETS = 10_000  # DSIR's hashed feature size


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def semb_scores(candidates: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> np.ndarray:
    """(candidates × targets) cosine similarity of mean instance embeddings."""
    c = _unit(np.stack([e.mean(axis=0) for e in candidates]).astype(np.float64))
    t = _unit(np.stack([e.mean(axis=0) for e in targets]).astype(np.float64))
    return c @ t.T


def retrieval_scores(candidates: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                     neighbors: int = 10) -> np.ndarray:
    """(candidates × targets) share of the target instances' nearest-neighbour votes."""
    owner = np.repeat(np.arange(len(candidates)), [len(e) for e in candidates])
    bank = np.concatenate(candidates, dtype=np.float32)
    k = min(neighbors, len(bank))
    scores = np.zeros((len(candidates), len(targets)))
    for j, queries in enumerate(targets):
        sims = queries.astype(np.float32) @ bank.T  # (m, N)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(bank) else np.tile(np.arange(k), (len(sims), 1))
        votes = np.bincount(owner[top].reshape(-1), minlength=len(candidates))
        scores[:, j] = votes / votes.sum()
    return scores


def ngram_counts(texts: Sequence[str]):
    """A sparse (texts × NGRAM_BUCKETS) matrix of hashed lower-cased word unigram and bigram counts."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(n_features=NGRAM_BUCKETS, ngram_range=(1, 2), alternate_sign=False,
                                   norm=None, lowercase=True, dtype=np.float64)
    return vectorizer.transform(list(texts))


def ngram_scores(candidates: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]) -> np.ndarray:
    """(candidates × targets) mean per-n-gram log importance weight of each candidate's instances."""
    sizes = [len(t) for t in candidates]
    counts = ngram_counts([x for texts in candidates for x in texts])
    raw = np.asarray(counts.sum(axis=0)).ravel() + 1.0  # add-one smoothing, as DSIR's bag-of-ngrams model
    log_raw = np.log(raw / raw.sum())
    owner = np.repeat(np.arange(len(candidates)), sizes)
    ngrams = np.maximum(np.bincount(owner, weights=np.asarray(counts.sum(axis=1)).ravel(),
                                    minlength=len(candidates)), 1.0)
    scores = np.zeros((len(candidates), len(targets)))
    for j, texts in enumerate(targets):
        target = np.asarray(ngram_counts(texts).sum(axis=0)).ravel()
        # Dirichlet smoothing towards the raw model, prior mass = the target's n-gram count (see module doc)
        prior = target.sum() * np.exp(log_raw)
        log_ratio = np.log((target + prior) / (2 * target.sum())) - log_raw
        importance = counts @ log_ratio  # DSIR's log importance weight of each instance
        scores[:, j] = np.bincount(owner, weights=importance, minlength=len(candidates)) / ngrams
    return scores
