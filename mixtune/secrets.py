"""Keep secrets (wandb key, hub token, passwords) out of logs, `mixtune_run.json` and reports.

Secrets come only from the environment. Anything mixtune writes or logs goes through `redact`
(structured data) or the `RedactingFilter` (log records): values of secret-looking keys become
`***`, and so does any occurrence of a secret environment variable's value inside a string.
"""

from __future__ import annotations

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
# Hugging Face user access tokens, wherever they appear.
_TOKEN_PATTERNS = (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),)
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would mask ordinary text


def is_secret_name(name: str) -> bool:
    """True for key / environment variable names that hold secrets (HF_TOKEN, WANDB_API_KEY, ...)."""
    upper = str(name).upper().replace("-", "_")
    return bool(_SECRET_NAME.search(upper)) and not _NOT_SECRET.match(upper)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and isinstance(v, str) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, values: list[str] | None = None) -> str:
    """`text` with every secret environment value and every hub token replaced by `***`."""
    for value in secret_values() if values is None else values:
        if value in text:
            text = text.replace(value, MASK)
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
