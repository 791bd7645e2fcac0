"""Vectorised formatting (mixtune/mixtures/formatting.py): the same strings as `encode_prompt`, whose
Tk-Instruct golden strings are in test_encodings.py, and the same references as `pick_reference`."""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pytest
from test_encodings import DEF, INPUT, NEG1, POS1, POS2, QUERY, TASK

from mixtune.encodings import (
    TK_INSTRUCT_ENCODINGS,
    EncodingSpec,
    encode_prompt,
    pick_reference,
    prompt_prefix,
)
from mixtune.mixtures import load_mixture, plan_mixture
from mixtune.mixtures.formatting import PY_WHITESPACE, instance_prompts, picked_references, reference_counts
from mixtune.mixtures.sampler import position_seed

# inputs that exercise str.strip() and the punctuation rule at their edges
TRICKY = ["", " ", "plain", "ends.", "ends?  ", "\u3000wide space\u3000", "\x1cfile sep\x1f", "nbsp\xa0",
          "zero width\u200b", "quote\"", "emoji 😀", "é", "。", "tab\t\n", "\x85next line\x85", "a\u2028",
          "  spaced   inside  ", "(paren)", "~"]


def test_py_whitespace_is_what_str_strip_removes():
    assert set(PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_no_rows():
    assert instance_prompts(pa.array([], pa.string()), pa.array([], pa.string())).to_pylist() == []


def test_golden_strings():
    spec = EncodingSpec(pos_examples=2, neg_examples=1)
    prompts = instance_prompts(pa.array([prompt_prefix(TASK, spec)]), pa.array([INPUT]))
    assert prompts.to_pylist() == [DEF + POS1 + POS2 + NEG1 + QUERY]


@pytest.mark.parametrize("spec", [EncodingSpec(), EncodingSpec(definition=False), *TK_INSTRUCT_ENCODINGS,
                                  EncodingSpec(task_name=True, pos_examples=3, neg_examples=2, explanation=True)])
def test_same_strings_as_encode_prompt_for_tricky_inputs(spec):
    prefix = prompt_prefix(TASK, spec)
    inputs = pa.array(["not written", *TRICKY]).slice(1)  # a slice: its offsets do not start at 0
    got = instance_prompts(pa.array([prefix] * len(TRICKY)), inputs).to_pylist()
    assert got == [encode_prompt(TASK, x, spec) for x in TRICKY]
    assert any(x and x.strip()[-1:] in string.punctuation for x in TRICKY)  # both sides of the rule


def test_picked_references_are_pick_reference_per_row():
    outputs = pa.array([["a"], ["b", "c"], ["d", "e", "f"], ["g", "h"], ["i"]] * 40, pa.list_(pa.string()))
    sliced = outputs.slice(3, 150)  # a slice: offsets do not start at 0
    seeds = np.array([position_seed(9, p) for p in range(150)])
    got = picked_references(sliced, seeds, reference_counts(sliced)).to_pylist()
    assert got == [pick_reference(refs, int(s)) for refs, s in zip(sliced.to_pylist(), seeds, strict=True)]
    assert set(got[0::5]) == {"g", "h"}  # a two-reference row really varies with the seed


def test_plan_examples_equal_the_per_example_reference_path(tmp_path):
    """Every bundled training task under mixed encodings: the batch path equals encode_prompt/pick_reference."""
    mixture = tmp_path / "m.yaml"
    mixture.write_text("""
name: mixed
seed: 3
total_examples: 3000
sources:
  - {name: tk, path: bundled, split: default, missing_tasks: skip, encoding: {tk_instruct: true}}
  - name: full
    path: bundled
    split: default
    missing_tasks: skip
    encoding: {task_name: true, pos_examples: 2, neg_examples: 2, explanation: true}
""")
    plan = plan_mixture(load_mixture(mixture))
    rows = [row for batch in plan.iter_batches(batch_size=700) for row in
            (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))]
    assert [r["position"] for r in rows] == list(range(3000))
    several = 0
    for r in rows:
        task = next(t for t in plan.tasks if t.name == r["task"] and t.source == r["source"])
        seed = position_seed(plan.seed ^ 0x656E63, r["position"]) if task.encoding.tk_instruct else None
        instance = task.table().filter(pa.compute.equal(task.table()["id"], r["instance_id"])).to_pylist()[0]
        assert r["prompt"] == encode_prompt(task.info, instance["input"], task.encoding, seed=seed)
        assert r["references"] == instance["output"]
        assert r["completion"] == pick_reference(instance["output"], position_seed(plan.seed, r["position"]))
        several += len(instance["output"]) > 1
    assert several > 0 and {t.source for t in plan.tasks} == {"tk", "full"}
