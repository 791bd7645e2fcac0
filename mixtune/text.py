"""Text normalisation shared by the metrics and decontamination (a base module: no mixtune imports)."""

from __future__ import annotations

import string

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SuperNI answer normalisation: lower-case, ASCII punctuation removed, whitespace collapsed.

    Articles are kept (as the SuperNI evaluation script does, unlike SQuAD's). Exact match compares
    answers in this form, and decontamination compares training and evaluation inputs in it.
    """
    return " ".join(text.lower().translate(_DROP_PUNCTUATION).split())
