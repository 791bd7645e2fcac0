"""Word n-gram overlap between training and evaluation inputs, on the SuperNI-normalised text.

Two tests (`mixtune.text.normalize_answer`: lower-case, punctuation removed, whitespace collapsed):

- exact: the normalised training input equals a normalised evaluation input;
- n-gram: the training input shares at least one word n-gram (n=13 by default, as GPT-3 and FLAN
  decontaminate) with an evaluation input.

The evaluation side becomes a sorted array of 64-bit n-gram hashes; each training task's inputs are
hashed in one vectorised pass (numpy) and looked up with `np.searchsorted`, so the cost is linear in the
number of words on both sides. Words that never occur on the evaluation side cannot be part of a shared
n-gram and are masked out before the lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mixtune.errors import ConfigError
from mixtune.text import normalize_answer

DEFAULT_NGRAM = 13
_PRIME = np.uint64(0x100000001B3)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spread small integer ids over 64 bits (wrapping arithmetic)."""
    z = values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _ngram_hashes(ids: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram that lies inside one text and has no unknown word (id 0).

    `ids` are the word ids of all texts concatenated, `owner` the text index of each word. Returns
    (hashes, owner of each n-gram).
    """
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    mixed = _mix(ids)
    with np.errstate(over="ignore"):
        hashes = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            hashes = hashes * _PRIME + mixed[k:k + count]
    unknown = np.concatenate([[0], np.cumsum(ids == 0)])
    valid = (owner[:count] == owner[n - 1:]) & (unknown[n:] - unknown[:count] == 0)
    return hashes[valid], owner[:count][valid]


@dataclass(frozen=True)
class EvalRef:
    """An evaluation instance that training text may overlap."""

    task: str
    instance_id: str


@dataclass
class EvalIndex:
    """The evaluation side: normalised inputs for exact match, sorted n-gram hashes for overlap."""

    n: int
    refs: list[EvalRef] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    owners: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def tasks(self) -> list[str]:
        """The evaluation tasks indexed, sorted."""
        return sorted({r.task for r in self.refs})

    def __len__(self) -> int:
        return len(self.refs)


def build_eval_index(items: Iterable[tuple[str, str, str]], n: int = DEFAULT_NGRAM) -> EvalIndex:
    """Index evaluation instances given as (task, instance_id, input)."""
    if n < 1:
        raise ConfigError(f"the n-gram length must be >= 1 (got {n})", field="ngram", hint="the usual value is 13")
    index = EvalIndex(n=n)
    ids: list[int] = []
    owner: list[int] = []
    for task, instance_id, text in items:
        k = len(index.refs)
        index.refs.append(EvalRef(task, str(instance_id)))
        norm = normalize_answer(text)
        if norm:
            index.exact.setdefault(norm, k)
        for word in norm.split():
            ids.append(index.vocab.setdefault(word, len(index.vocab) + 1))
            owner.append(k)
    hashes, owners = _ngram_hashes(np.asarray(ids, np.int64), np.asarray(owner, np.int64), n)
    order = np.argsort(hashes, kind="stable")
    hashes, owners = hashes[order], owners[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    index.hashes, index.owners = hashes[first], owners[first]
    return index


@dataclass(frozen=True)
class Overlap:
    """A training instance that overlaps an evaluation instance."""

    source: str
    task: str
    row: int
    instance_id: str
    kind: str  # "exact" or "ngram"
    eval_task: str
    eval_instance_id: str
    shared_ngrams: int


def find_overlaps(index: EvalIndex, source: str, task: str, ids: Sequence[str],
                  inputs: Sequence[str]) -> list[Overlap]:
    """The instances of one training task (ids and inputs in row order) that overlap the index."""
    found: list[Overlap] = []
    exact_rows: set[int] = set()
    word_ids: list[int] = []
    owner: list[int] = []
    vocab = index.vocab
    for row, text in enumerate(inputs):
        norm = normalize_answer(text)
        hit = index.exact.get(norm) if norm else None
        if hit is not None:
            ref = index.refs[hit]
            found.append(Overlap(source, task, row, str(ids[row]), "exact", ref.task, ref.instance_id,
                                 max(len(norm.split()) - index.n + 1, 0)))
            exact_rows.add(row)
            continue
        words = norm.split()
        word_ids.extend(vocab.get(w, 0) for w in words)
        owner.extend([row] * len(words))
    if len(index.hashes):
        hashes, rows = _ngram_hashes(np.asarray(word_ids, np.int64), np.asarray(owner, np.int64), index.n)
        pos = np.searchsorted(index.hashes, hashes)
        pos = np.minimum(pos, len(index.hashes) - 1)
        match = index.hashes[pos] == hashes
        if match.any():
            hit_rows, hit_eval = rows[match], index.owners[pos[match]]
            counts = np.bincount(hit_rows)
            uniq, first = np.unique(hit_rows, return_index=True)
            for row, at in zip(uniq.tolist(), first.tolist(), strict=True):
                ref = index.refs[int(hit_eval[at])]
                found.append(Overlap(source, task, row, str(ids[row]), "ngram", ref.task, ref.instance_id,
                                     int(counts[row])))
    found.sort(key=lambda o: o.row)
    return found
