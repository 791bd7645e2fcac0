"""`mixtune recipe preview RECIPE [key=value ...] [--n N] [--json]`: the first training examples as the model sees them.

Each example goes through the recipe's own collator tokenization (the same prompt budget, truncation
and chat rendering as `mixtune train`), then is decoded back for reading: the prompt part, the
trained (label) part marked, token counts, whether and where truncation cut, and with packing which
examples share a row of the first micro-batches. Only the tokenizer (and the model's config, for its
context length) is loaded, never the weights.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from mixtune.cli_args import CommandArgs, add_json, add_overrides

#: Marks around the trained (label) tokens in the text view.
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def preview_examples(recipe: Any, n: int = 4) -> list[dict[str, Any]]:
    """The first `n` examples of the recipe's training stream, tokenized exactly as training does.

    Each: {"position", "task", "input_text", "label_text", "num_tokens", "num_label_tokens",
    "num_prompt_tokens", "prompt_tokens_before_cut", "truncated", "row"} where input_text is the
    decoded prompt ids, label_text the decoded label ids, and row (packing only) names the packed row
    "batch B row R" the example shares with others of its micro-batch.
    """
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture
    from mixtune.models.kind import model_kind
    from mixtune.models.tokenizer import load_tokenizer
    from mixtune.tokenization import source_ids
    from mixtune.train.collators import IGNORE_INDEX
    from mixtune.train.trainer import build_collator

    plan = plan_mixture(load_mixture(recipe.data.mixture, collection=recipe.data.collection))
    tokenizer = load_tokenizer(recipe.model)
    context = _context(recipe.model)
    if context is not None:
        tokenizer.model_max_length = context
    kind = model_kind(recipe.model) or "causal"
    collate = build_collator(recipe, None, tokenizer, kind)
    tokenizing = getattr(collate, "_tokenizing", collate)  # the packing collator tokenizes through its own
    examples = list(plan.iter_examples(0, min(n, len(plan))))
    tokenized = tokenizing.tokenize(examples)
    rows = _rows(recipe, [len(t["input_ids"]) for t in tokenized])
    out = []
    for i, (example, tok) in enumerate(zip(examples, tokenized, strict=True)):
        ids, labels = list(tok["input_ids"]), list(tok["labels"])
        if kind == "causal":
            prompt = [t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX]
            trained = [lab for lab in labels if lab != IGNORE_INDEX]
        else:
            prompt, trained = ids, labels
        text = example["prompt"]
        if kind == "causal" and recipe.model.chat_template is not None:
            from mixtune.encodings import render_chat

            text, _ = render_chat(tokenizer, text, example["completion"])
        before = len(source_ids(tokenizer, text, kind=kind)[0])  # type: ignore[arg-type]
        out.append({
            "position": example["position"], "task": example["task"],
            "input_text": tokenizer.decode(prompt), "label_text": tokenizer.decode(trained),
            "num_tokens": len(ids) + (len(trained) if kind == "seq2seq" else 0),
            "num_label_tokens": len(trained), "num_prompt_tokens": len(prompt),
            "prompt_tokens_before_cut": before, "truncated": tok["truncated"], "row": rows.get(i),
        })
    return out


def _context(cfg: Any) -> int | None:
    """The model's context length from its config alone (no weights)."""
    from transformers import AutoConfig

    from mixtune.models.load import context_length

    try:
        if cfg.config is not None:
            values = dict(cfg.config)
            return context_length(AutoConfig.for_model(values.pop("model_type"), **values))
        if cfg.name_or_path is not None:
            return context_length(AutoConfig.from_pretrained(cfg.name_or_path))
    except (OSError, ValueError):
        return None
    return None


def _rows(recipe: Any, lengths: list[int]) -> dict[int, str]:
    """Example index -> 'batch B row R' of the packed micro-batches (empty without packing)."""
    if not recipe.data.packing:
        return {}
    from mixtune.train.packing import pack_lengths, packing_layout

    size = recipe.training.per_device_batch_size
    padding_free = packing_layout(recipe.model.attn_implementation) == "padding_free"
    where: dict[int, str] = {}
    for b, lo in enumerate(range(0, len(lengths), size)):
        chunk = lengths[lo:lo + size]
        rows = [list(range(len(chunk)))] if padding_free else pack_lengths(chunk, recipe.data.max_length)
        for r, row in enumerate(rows):
            for i in row:
                where[lo + i] = f"batch {b} row {r}"
    return where


def render(previews: list[dict[str, Any]]) -> str:
    """The text view: a header line per example, then its prompt with the trained tokens marked."""
    blocks = []
    for i, p in enumerate(previews):
        cut = {None: "not truncated",
               "prompt": f"prompt cut from {p['prompt_tokens_before_cut']} to {p['num_prompt_tokens']} tokens",
               "completion": "completion cut (the prompt kept its end)"}[p["truncated"]]
        row = f"; {p['row']}" if p.get("row") else ""
        blocks.append(f"#{i} {p['task']} (position {p['position']}): {p['num_tokens']} tokens, "
                      f"{p['num_label_tokens']} trained; {cut}{row}\n"
                      f"{p['input_text']}{TRAINED_OPEN}{p['label_text']}{TRAINED_CLOSE}")
    return "\n\n".join(blocks)


JSON_KEYS = ("task", "input_text", "label_text", "num_tokens", "num_label_tokens", "truncated")


@dataclass(frozen=True, kw_only=True)
class PreviewArgs(CommandArgs):
    """`mixtune recipe preview RECIPE [KEY=VALUE ...]`."""

    recipe: str
    overrides: list[str]
    n: int
    json: bool


def preview_command(args: PreviewArgs) -> int:
    """Print the first `--n` examples of the recipe (text, or `--json`)."""
    from mixtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, list(args.overrides))
    previews = preview_examples(recipe, args.n)
    if args.json:
        print(json.dumps([{k: p[k] for k in JSON_KEYS} for p in previews], ensure_ascii=False, indent=1))
    else:
        print(render(previews))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `recipe preview` to the `mixtune recipe` parser."""
    p = sub.add_parser(
        "preview", help="show the first training examples exactly as the model sees them",
        description="Tokenize the first N examples of the recipe's training stream as `mixtune train` does "
        "(prompt budget, truncation, chat rendering, packing) and print them decoded: the trained (label) "
        f"tokens between {TRAINED_OPEN} {TRAINED_CLOSE}, token counts, where truncation cut, which examples share "
        "a packed row. Loads the tokenizer, not the model weights.",
        epilog="example: mixtune recipe preview recipes/tiny_causal.yaml data.max_source_length=64 --n 3")
    p.add_argument("recipe", help="recipe YAML file")
    add_overrides(p, "recipe", what="recipe fields, as `mixtune train`", example="data.max_source_length=64")
    p.add_argument("--n", type=int, default=4, help="number of examples (default 4)")
    add_json(p, "a list of {task, input_text, label_text, num_tokens, num_label_tokens, truncated} "
                "(input_text: the decoded prompt ids; label_text: the decoded label ids)")
    p.set_defaults(func=preview_command, arguments=PreviewArgs)
