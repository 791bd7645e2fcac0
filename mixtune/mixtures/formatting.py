"""Examples as Arrow columns: a task's fixed prompt prefix joined with each input, and the picked reference.

`encode_prompt` (mixtune/encodings.py) defines the strings; here the same strings are written for a
whole batch with Arrow string kernels: `prompt_prefix` is computed once per (task, encoding) and the
per-instance part (`input.strip()`, Tk-Instruct's punctuation rule, "\\nOutput: ") is vectorised.
"""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixtune.encodings import OUTPUT_CUE, pick_reference

#: The characters `str.strip()` removes (every c with c.isspace()); tests check the list is complete.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_PUNCTUATION_BYTES = np.zeros(256, dtype=bool)
_PUNCTUATION_BYTES[list(string.punctuation.encode("ascii"))] = True


def instance_prompts(prefixes: pa.Array, inputs: pa.Array) -> pa.Array:
    """Row by row, `prefix + input.strip()`, then '.' unless that ends in punctuation, then "\\nOutput: ".

    With `prefixes` from `prompt_prefix`, this is `encode_prompt`'s string (no token budget).
    """
    stripped = pc.utf8_trim(inputs, characters=PY_WHITESPACE)
    tails = pc.if_else(pa.array(_ends_in_punctuation(stripped)), OUTPUT_CUE, "." + OUTPUT_CUE)
    return pc.binary_join_element_wise(prefixes, stripped, tails, "")


def _ends_in_punctuation(strings: pa.StringArray) -> np.ndarray:
    """Whether each string's last character is in `string.punctuation` (all ASCII: in UTF-8 it is the last
    byte, and a last byte below 0x80 is a whole character)."""
    if not len(strings):
        return np.zeros(0, dtype=bool)
    _, offset_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)
    nonempty = offsets[1:] > offsets[:-1]
    last = np.zeros(len(strings), dtype=np.uint8)
    last[nonempty] = data[offsets[1:][nonempty] - 1]
    return _PUNCTUATION_BYTES[last] & nonempty


def reference_counts(outputs: pa.ListArray) -> np.ndarray:
    """Number of reference outputs of each row."""
    return pc.list_value_length(outputs).to_numpy(zero_copy_only=False).astype(np.int64)


def picked_references(outputs: pa.ListArray, seeds: np.ndarray, counts: np.ndarray) -> pa.Array:
    """Each row's completion: its only reference, or with several `pick_reference(refs, seed)` of its seed.

    Rows with no reference must have been rejected before (`counts` > 0 everywhere).
    """
    choice = np.zeros(len(outputs), dtype=np.int64)
    for i in np.flatnonzero(counts > 1).tolist():
        choice[i] = pick_reference(range(int(counts[i])), int(seeds[i]))
    starts = outputs.offsets.to_numpy()[:-1].astype(np.int64)
    return outputs.values.take(pa.array(starts + choice))
