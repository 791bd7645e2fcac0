"""Rank classification: pick the label with the highest log-likelihood (the T0 / MetaICL way).

For a task whose outputs come from a small label set (see `evalsets.label_set`), each candidate
label is scored by the model's summed log-probability of its tokens (plus EOS, so that a label that
is a prefix of another is not favoured) given the prompt, and the best one is the prediction.
These predictions are scored separately from generation (exact match).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mixtune.eval.generation import encode_prompts, model_device, pad_batch, special_ids
from mixtune.eval.sharding import evaluate_sharded, length_sorted, shard
from mixtune.models.kind import model_kind


def label_ids(tokenizer: Any, label: str, eos_ids: Sequence[int]) -> list[int]:
    """A label's tokens as the model would write them: no special tokens, then EOS when there is one."""
    ids = list(tokenizer(label, add_special_tokens=False)["input_ids"])
    return ids + ([eos_ids[0]] if eos_ids else [])


@torch.no_grad()  # not inference_mode: ZeRO-3 gathers parameters that training reuses
def score_candidates(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                     kind: str | None = None, distributed: bool = True,
                     max_source_length: int | None = None) -> list[float]:
    """Summed log-likelihood of each (prompt, label) pair's label given its prompt (cut to
    `max_source_length` tokens as generation cuts it), in order."""
    kind = kind or model_kind(model)
    pad_id, eos_ids = special_ids(model, tokenizer)
    device = model_device(model)
    prompts = encode_prompts(tokenizer, [p for p, _ in pairs], kind, max_source_length)
    labels = [label_ids(tokenizer, lab, eos_ids) for _, lab in pairs]
    order = length_sorted([len(p) + len(t) for p, t in zip(prompts, labels, strict=True)])

    def run_batch(batch: list[int]) -> list[float]:
        if kind == "causal":
            seqs = [prompts[i] + labels[i] for i in batch]
            ids, mask = pad_batch(seqs, pad_id, left=False)
            target = torch.full_like(ids, -100)
            for row, i in enumerate(batch):
                end = len(seqs[row])
                target[row, end - len(labels[i]):end] = ids[row, end - len(labels[i]):end]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logits, target = logits[:, :-1], target[:, 1:].to(device)
        else:
            ids, mask = pad_batch([prompts[i] for i in batch], pad_id, left=False)
            lab, lab_mask = pad_batch([labels[i] for i in batch], pad_id, left=False)
            target = lab.masked_fill(lab_mask == 0, -100).to(device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=target).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (target != -100)).sum(-1).tolist()

    return evaluate_sharded(model, shard(order, distributed=distributed), len(pairs), run_batch,
                            batch_size=batch_size, fill=0.0)


def rank_classify(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]],
                  labels_by_task: dict[str, Sequence[str]], *, batch_size: int = 16, kind: str | None = None,
                  distributed: bool = True, max_source_length: int | None = None) -> list[dict[str, Any]]:
    """Prediction records (record + "prediction", "label_scores") for the records whose task has a label set."""
    chosen = [r for r in records if labels_by_task.get(r["Task"])]
    pairs = [(r["prompt"], lab) for r in chosen for lab in labels_by_task[r["Task"]]]
    scores = score_candidates(model, tokenizer, pairs, batch_size=batch_size, kind=kind, distributed=distributed,
                              max_source_length=max_source_length)
    out: list[dict[str, Any]] = []
    pos = 0
    for record in chosen:
        labels = list(labels_by_task[record["Task"]])
        mine = scores[pos:pos + len(labels)]
        pos += len(labels)
        best = max(range(len(labels)), key=lambda j: mine[j])
        out.append({**record, "prediction": labels[best],
                    "label_scores": dict(zip(labels, (round(s, 4) for s in mine), strict=True))})
    return out
