"""Packing several causal examples into each batch, without cross-contamination.

Each batch of examples (as the sampler hands them out, so resuming at a sample position still
gives the same batches) is tokenized and packed. Every example keeps its own positions
(position_ids restart at 0), attention never crosses examples, and the first token of each
example has label -100 (no example is trained to predict the next one's first token), so the loss
of a packed batch is the loss of the same examples run one by one (token-weighted), see
tests/test_packing.py. How attention is kept inside each example depends on the kernel
(`packing_layout(attn_implementation)`):

* `padding_free` (flash_attention_2/3, kernel-hub kernels): the batch is one row of all its
  examples, no padding, with `position_ids` and the cumulative sequence lengths `cu_seq_lens_q/k`
  and `max_length_q/k` -- exactly transformers' `DataCollatorWithFlattening` (which makes it);
  the varlen FlashAttention kernels read the boundaries from them. No mask at all.
* `block_mask` (flex_attention): rows of at most `max_length` tokens with `packed_segment_ids`
  [rows, L] (-1 on padding); the trainer turns them into a flex `BlockMask` on the device
  (`flex_block_mask`), so no dense mask is built or moved.
* `mask4d` (sdpa, eager): rows of at most `max_length` tokens with a 4D block-diagonal causal mask
  [rows, 1, L, L]: boolean (True = may attend) for sdpa, additive in `mask_dtype` for eager (whose
  kernel adds the mask to the scores). Padding attends only to itself (no all-masked softmax row).

Rows (block_mask, mask4d) are filled by `pack_lengths`:
* `strategy="balanced"` (default): as many rows as the tokens need (ceil(total / max_length)),
  filled longest-example-first into the currently shortest row that still has room (a new row
  when none has); rows end up nearly equally long, so padding to the longest row wastes little.
* `strategy="bfd"`: best-fit decreasing, longest example first into the fullest row it fits in.

Restarting position_ids alone are not enough under sdpa/eager/flex (tokens would attend to the
earlier examples of the row); only the varlen FlashAttention path reads boundaries from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mixtune.models.spec import Layout, packing_layout
from mixtune.train.collators import IGNORE_INDEX, CompletionOnlyCollator, check_loss_mask

__all__ = ["Layout", "packing_layout"]  # re-exported: the layout follows the model's attention kernel

Strategy = Literal["balanced", "bfd"]
def pack_lengths(lengths: Sequence[int], max_length: int, strategy: Strategy = "balanced") -> list[list[int]]:
    """Group example indices into rows whose total length is at most max_length.

    Rows list their examples in input order; the result is a pure function of the lengths.
    """
    too_long = [n for n in lengths if n > max_length]
    if too_long:
        raise ValueError(f"an example of {too_long[0]} tokens does not fit a row of {max_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    fill: list[int] = []
    if strategy == "balanced":
        n_rows = max(1, math.ceil(sum(lengths) / max_length))
        rows, fill = [[] for _ in range(n_rows)], [0] * n_rows
        for i in order:
            fits = [r for r in range(len(rows)) if fill[r] + lengths[i] <= max_length]
            if not fits:
                rows.append([])
                fill.append(0)
                fits = [len(rows) - 1]
            r = min(fits, key=lambda r: (fill[r], r))
            rows[r].append(i)
            fill[r] += lengths[i]
    elif strategy == "bfd":
        for i in order:
            fits = [r for r in range(len(rows)) if fill[r] + lengths[i] <= max_length]
            if fits:
                r = max(fits, key=lambda r: (fill[r], -r))
            else:
                rows.append([])
                fill.append(0)
                r = len(rows) - 1
            rows[r].append(i)
            fill[r] += lengths[i]
    else:
        raise ValueError(f"unknown packing strategy {strategy!r} (balanced or bfd)")
    return [sorted(row) for row in rows if row]


def block_causal_mask(segments: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """[rows, 1, L, L] mask from per-token segment ids [rows, L]: a query attends keys of its own
    segment at or before it. Segment id -1 marks padding, which attends only to itself. Boolean
    (True = may attend) for `dtype=torch.bool`, else additive (0 or the dtype's minimum)."""
    length = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = same & causal & (segments[:, :, None] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool)
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape[0], 1, length, length, dtype=dtype)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def flex_block_mask(segments: torch.Tensor) -> Any:
    """flex attention's BlockMask for per-token segment ids [rows, L] (built on their device): the
    same rule as `block_causal_mask`, evaluated block-sparsely by the flex kernel."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = segments.shape

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return ((segments[b, q] == segments[b, kv]) & (q >= kv) & (segments[b, q] >= 0)) | (q == kv)

    return create_block_mask(mask_mod, rows, None, length, length, device=segments.device)


@dataclass
class PackingStats:
    """What one packed batch holds: useful = tokens of real examples (not padding)."""

    examples: int
    rows: int
    row_length: int
    useful_tokens: int
    trained_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.rows * self.row_length

    @property
    def useful_fraction(self) -> float:
        return self.useful_tokens / self.total_tokens if self.total_tokens else 0.0


class PackingCollator:
    """Causal batches with several examples per row in the `layout` of the attention kernel (see the
    module docstring): input_ids, labels, position_ids (restarting per example) and the boundaries
    (cu_seq_lens, packed_segment_ids or a 4D attention_mask). `mask_dtype` is the dtype of the 4D
    mask: torch.bool for sdpa, the compute dtype for eager. Rows are padded to the longest row of
    the batch (rounded up to pad_to_multiple_of). `last_stats` holds the PackingStats of the latest batch and
    `last_layout` its rows: per row, the (example index, length) of its examples in order."""

    def __init__(self, tokenizer: Any, *, max_length: int, strategy: Strategy = "balanced",
                 mask_dtype: torch.dtype = torch.bool, pad_to_multiple_of: int | None = None,
                 chat: bool = False, max_source_length: int | None = None, layout: Layout = "mask4d") -> None:
        if layout not in ("padding_free", "block_mask", "mask4d"):
            raise ValueError(f"unknown packing layout {layout!r}")
        self.layout = layout
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.strategy = strategy
        self.mask_dtype = mask_dtype
        self.pad_to_multiple_of = pad_to_multiple_of
        self._tokenizing = CompletionOnlyCollator(tokenizer, max_length=max_length, chat=chat,
                                                 max_source_length=max_source_length)
        self.last_stats: PackingStats | None = None
        self.last_layout: list[list[tuple[int, int]]] = []

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        examples = self._tokenizing.tokenize(features)
        lengths = [len(e["input_ids"]) for e in examples]
        if self.layout == "padding_free":
            return self._flattened(examples, lengths, features)
        rows = pack_lengths(lengths, self.max_length, self.strategy)
        length = max(sum(lengths[i] for i in row) for row in rows)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        segments = torch.full((len(rows), length), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for seg, i in enumerate(row):
                n = lengths[i]
                input_ids[r, start:start + n] = torch.tensor(examples[i]["input_ids"])
                labels[r, start:start + n] = torch.tensor(examples[i]["labels"])
                labels[r, start] = IGNORE_INDEX
                position_ids[r, start:start + n] = torch.arange(n)
                segments[r, start:start + n] = seg
                start += n
        check_loss_mask(labels, features)
        self.last_layout = [[(i, lengths[i]) for i in row] for row in rows]  # per row: (example, length)
        self.last_stats = PackingStats(examples=len(examples), rows=len(rows), row_length=length,
                                       useful_tokens=sum(lengths),
                                       trained_tokens=int((labels != IGNORE_INDEX).sum()))
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.layout == "block_mask":
            return {**batch, "packed_segment_ids": segments}
        return {**batch, "attention_mask": block_causal_mask(segments, self.mask_dtype)}

    def _flattened(self, examples: list[dict[str, Any]], lengths: list[int],
                   features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from transformers import DataCollatorWithFlattening

        flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE_INDEX)
        batch = flatten([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples], return_tensors="pt")
        check_loss_mask(batch["labels"], features)
        self.last_layout = [list(enumerate(lengths))]  # one row: every example, in order
        self.last_stats = PackingStats(examples=len(examples), rows=1, row_length=sum(lengths),
                                       useful_tokens=sum(lengths),
                                       trained_tokens=int((batch["labels"] != IGNORE_INDEX).sum()))
        return dict(batch)
