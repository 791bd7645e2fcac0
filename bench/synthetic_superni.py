"""Write a synthetic Super-NaturalInstructions-format collection for benchmarks.

The collection mimics the real one's shape: 1,600 task files whose sizes follow a skewed
(log-normal) distribution, each with the real header fields (Definition, Positive/Negative
Examples with explanations, Categories, languages, ...), instance inputs of ~200-600 characters and
short outputs (a label for classification-like tasks, a few words otherwise), plus
`splits/default/{train,test,excluded}_tasks.txt` partitioning the tasks like the official split.

    python bench/synthetic_superni.py OUT [--tasks 1600] [--instances 800000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CATEGORIES = [
    "Question Answering", "Sentiment Analysis", "Text Categorization", "Translation", "Summarization",
    "Textual Entailment", "Program Execution", "Question Generation", "Commonsense Classification",
    "Information Extraction", "Named Entity Recognition", "Title Generation", "Coreference Resolution",
    "Data to Text", "Grammar Error Correction", "Keyword Tagging", "Question Rewriting", "Word Analogy",
    "Dialogue Act Recognition", "Cause Effect Classification", "Answerability Classification",
    "Overlap Extraction", "Paraphrasing", "Toxic Language Detection", "Text Completion",
    "Fill in The Blank", "Misc.", "Story Composition", "Wrong Candidate Generation", "Sentence Ordering",
]
LANGUAGES = ["English"] * 12 + ["Spanish", "French", "German", "Hindi", "Chinese", "Japanese"]
SPLIT_SHARES = (756, 119, 738)  # the official default split's train / test / excluded sizes

_SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "to", "vu", "sa", "de", "pi", "qua", "ber", "lin", "dor", "fe",
              "gro", "hal", "is", "jun", "ox", "ple", "rin", "sto", "tha", "wen", "yel", "zor", "an", "el", "um"]


def _vocabulary(rng: np.random.Generator, size: int = 5000) -> list[str]:
    words = set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        words.add("".join(rng.choice(_SYLLABLES, n)))
    return [str(w) for w in rng.permutation(sorted(words))]  # Zipf rank order independent of spelling


def _corpus(rng: np.random.Generator, vocab: list[str], num_words: int) -> str:
    """A long text of Zipf-distributed words with sentence punctuation, sliced into inputs."""
    ranks = np.minimum(rng.zipf(1.3, num_words) - 1, len(vocab) - 1)
    words = [vocab[r] for r in ranks]
    for i in range(0, num_words, 14):
        words[i] = words[i].capitalize()
        if i:
            words[i - 1] += "."
    return " ".join(words)


def task_sizes(num_tasks: int, total_instances: int, rng: np.random.Generator,
               minimum: int = 10, maximum: int = 6500) -> np.ndarray:
    """Log-normal task sizes, clipped to [minimum, maximum], summing to at least `total_instances`."""
    raw = rng.lognormal(mean=0.0, sigma=1.2, size=num_tasks)
    sizes = np.clip(np.round(raw / raw.sum() * total_instances), minimum, maximum).astype(np.int64)
    while sizes.sum() < total_instances:  # clipping removed mass: give it to tasks below the maximum
        room = sizes < maximum
        extra = total_instances - int(sizes.sum())
        add = np.minimum(np.ceil(extra * sizes[room] / sizes[room].sum()), maximum - sizes[room])
        sizes[room] += add.astype(np.int64)
    return sizes


def write_synthetic_collection(root: str | Path, num_tasks: int = 1600, total_instances: int = 800_000,
                               seed: int = 0) -> Path:
    """Write a SuperNI-format folder under `root` (tasks/*.json, splits/default/*.txt); returns `root`."""
    root = Path(root)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    corpus = _corpus(rng, vocab, 2_000_000)
    sizes = task_sizes(num_tasks, total_instances, rng)
    names = []

    def text(lo: int, hi: int) -> str:
        start = int(rng.integers(0, len(corpus) - hi))
        return corpus[start:start + int(rng.integers(lo, hi))].strip()

    for t, n in enumerate(sizes):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        name = f"task{t:04d}_{vocab[int(rng.integers(len(vocab)))]}_{category.split()[0].lower().rstrip('.')}"
        names.append(name)
        language = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
        classify = rng.random() < 0.5
        labels = [vocab[int(i)] for i in rng.integers(0, len(vocab), int(rng.integers(2, 6)))]

        def output(classify: bool = classify, labels: list[str] = labels) -> list[str]:
            if classify:
                return [labels[int(rng.integers(len(labels)))]]
            return [text(3, 40) for _ in range(int(rng.integers(1, 3)))]

        def example(explain: bool) -> dict:
            ex = {"input": text(100, 400), "output": output()[0]}
            if explain:
                ex["explanation"] = text(40, 160)
            return ex

        starts = rng.integers(0, len(corpus) - 600, int(n))
        lengths = rng.integers(200, 600, int(n))
        task = {
            "Contributors": ["Synthetic"],
            "Source": [f"synthetic_{t % 97}"],
            "URL": ["https://example.org/synthetic"],
            "Categories": [category],
            "Reasoning": [],
            "Definition": [text(100, 500)],
            "Input_language": [language],
            "Output_language": [language],
            "Instruction_language": ["English"],
            "Domains": ["Synthetic"],
            "Positive Examples": [example(True) for _ in range(int(rng.integers(2, 5)))],
            "Negative Examples": [example(True) for _ in range(int(rng.integers(1, 3)))],
            "Instances": [
                {"id": f"task{t:04d}-{i:08x}", "input": corpus[s:s + ln], "output": output()}
                for i, (s, ln) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True))
            ],
        }
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task, indent=4, ensure_ascii=False),
                                                     encoding="utf-8")

    order = rng.permutation(len(names))
    shares = np.array(SPLIT_SHARES, dtype=float) / sum(SPLIT_SHARES)
    n_train, n_test = int(round(shares[0] * len(names))), int(round(shares[1] * len(names)))
    parts = {"train": order[:n_train], "test": order[n_train:n_train + n_test], "excluded": order[n_train + n_test:]}
    split_dir = root / "splits" / "default"
    split_dir.mkdir(parents=True, exist_ok=True)
    for part, idx in parts.items():
        (split_dir / f"{part}_tasks.txt").write_text("".join(names[i] + "\n" for i in sorted(idx)), encoding="utf-8")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tasks", type=int, default=1600)
    parser.add_argument("--instances", type=int, default=800_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    write_synthetic_collection(args.out, args.tasks, args.instances, args.seed)
    size = sum(f.stat().st_size for f in (args.out / "tasks").glob("*.json"))
    print(f"wrote {args.tasks} tasks, >= {args.instances} instances, {size / 1e6:.0f} MB to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
