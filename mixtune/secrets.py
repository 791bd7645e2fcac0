"""Keep secrets (wandb key, hub token, passwords) out of logs, `mixtune_run.json` and reports.

Secrets come only from the environment. Anything mixtune writes or logs goes through `redact`
(structured data) or the `RedactingFilter` (log records, on the console and in `train.log`): values of
secret-looking keys become `***`, and so do a secret environment variable's value inside a string
and known token shapes (Hugging Face, OpenAI, GitHub, AWS, Slack). Only values that look like secrets
are searched for in text: at least 8 characters, and not a single plain word under 16 letters
(`OPENAI_API_KEY=Question` must not turn "Question Rewriting" into "*** Rewriting"); such a value is
still masked under its own key. A value under 16 characters is masked only as a whole token (not
inside a longer word); a longer one wherever it occurs.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# Key names that hold secrets: WANDB_API_KEY, HF_TOKEN, *_TOKEN, *_KEY, *SECRET*, passwords, credentials.
_SECRET_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|(^|_)TOKEN$|(^|_)KEY$|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY"
    r"|AUTH_?TOKEN|ACCESS_?TOKEN)",
)
# Tokenizer settings that end in _token / _key but are not secrets.
_NOT_SECRET = re.compile(
    r"^((PAD|EOS|BOS|UNK|SEP|CLS|MASK|DECODER_START|START|END|EOT|IMAGE|AUDIO|VIDEO|BOI|EOI)_TOKEN"
    r"|ADD_(BOS|EOS)_TOKEN|ADDITIONAL_SPECIAL_TOKENS|SORT_KEY|PRIMARY_KEY)$"
)
# Known token shapes, wherever they appear: Hugging Face, OpenAI, GitHub, AWS access key ids, Slack.
_TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
)
_MIN_SECRET_LEN = 8  # shorter env values ("1", "true", "offline") would mask ordinary text
_PLAIN_WORD_LEN = 16  # a single word of letters shorter than this is not searched for in text


def is_secret_name(name: str) -> bool:
    """True for key / environment variable names that hold secrets (HF_TOKEN, WANDB_API_KEY, ...)."""
    upper = str(name).upper().replace("-", "_")
    return bool(_SECRET_NAME.search(upper)) and not _NOT_SECRET.match(upper)


def _searchable(value: str) -> bool:
    """Whether a secret value is distinctive enough to be searched for in free text."""
    value = value.strip()
    return len(value) >= _MIN_SECRET_LEN and (len(value) >= _PLAIN_WORD_LEN or not value.isalpha())


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret environment variables that are searched for in text, longest first."""
    env = os.environ if environ is None else environ
    values = {v.strip() for k, v in env.items() if is_secret_name(k) and isinstance(v, str) and _searchable(v)}
    return sorted(values, key=len, reverse=True)


@functools.lru_cache(maxsize=8)
def _occurrences(values: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern matching any of `values` (longest first): a short one only where it is not part of a
    longer word."""
    def one(v: str) -> str:
        return re.escape(v) if len(v) >= _PLAIN_WORD_LEN else rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])"

    return re.compile("|".join(one(v) for v in values))


def redact_text(text: str, values: list[str] | None = None) -> str:
    """`text` with every secret environment value and every known token shape replaced by `***`."""
    values = secret_values() if values is None else values
    if values and any(v in text for v in values):
        text = _occurrences(tuple(values)).sub(MASK, text)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(MASK, text)
    return text


def redact(obj: Any, *, values: list[str] | None = None) -> Any:
    """A copy of `obj` (dicts, lists, tuples, strings, scalars) with secrets replaced by `***`.

    A string value under a secret-looking key (`hf_token`, `WANDB_API_KEY`, `password`, ...) is
    masked whole; every other string has secret environment values masked where they occur.
    """
    if values is None:
        values = secret_values()
    if isinstance(obj, str):
        return redact_text(obj, values)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(value, (str, bytes)) and value and is_secret_name(str(key)):
                out[key] = MASK
            else:
                out[key] = redact(value, values=values)
        return out
    if isinstance(obj, (list, tuple)):
        items = [redact(v, values=values) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message and traceback (never drops records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = secret_values()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        record.msg, record.args = redact_text(message, values), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, values)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, values)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one RedactingFilter to every handler of `logger` (default: the root logger).

    Handler filters see records propagated from every child logger (transformers, accelerate, ...),
    so call this after the handlers are set up (e.g. after `logging.basicConfig`) and again when a
    handler is added later. Returns the filter.
    """
    logger = logger or logging.getLogger()
    existing = next((f for h in logger.handlers for f in h.filters if isinstance(f, RedactingFilter)), None)
    filt = existing or RedactingFilter()
    for handler in logger.handlers:
        if filt not in handler.filters:
            handler.addFilter(filt)
    return filt
