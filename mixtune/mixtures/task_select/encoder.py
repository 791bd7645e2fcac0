"""Sentence embeddings with the shipped all-MiniLM-L6-v2: mean pooling over tokens, then L2 norm.

This is how the checkpoint defines its sentence vector (modules.json: Transformer -> Pooling with
`pooling_mode_mean_tokens` -> Normalize; `max_seq_length` 256), computed with plain transformers
(AutoModel + AutoTokenizer) in batches under `torch.inference_mode`, with a progress bar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixtune.minilm import MINILM_NAME, minilm_path, minilm_version
from mixtune.tasks.cache import content_hash


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence vectors (float32, unit length); the model is loaded on first use."""

    def __init__(self, path: str | None = None, *, batch_size: int = 64, progress: bool = True) -> None:
        self.path = path or minilm_path(field="--method", what="the semb and retrieval methods need the MiniLM "
                                                              "sentence encoder")
        config = Path(self.path) / "sentence_bert_config.json"
        self.max_length = int(json.loads(config.read_text())["max_seq_length"]) if config.exists() else 256
        self.name = MINILM_NAME if path is None else str(path)
        self.batch_size = batch_size
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def key(self) -> str:
        """Names the vectors this encoder computes (checkpoint, version, length, pooling): the cache folder."""
        digest = content_hash(self.name, minilm_version(), str(self.max_length), "mean-pool+l2")[:16]
        return f"{self.name.rstrip('/').split('/')[-1]}-{digest}"

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._model = AutoModel.from_pretrained(self.path).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """An (n, 384) float32 array of unit vectors, in the order of `texts`.

        Texts are batched by length (longest first) so little compute goes to padding.
        """
        import torch
        from tqdm.auto import tqdm

        if self._model is None:
            self._load()
        dim = self._model.config.hidden_size
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
        bar = tqdm(total=len(texts), desc="embedding instances", unit="text", disable=not self.progress)
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                batch = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()
                bar.update(len(idx))
        bar.close()
        return out
