"""mixtune's own exceptions: every message names the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

#: The most characters of a user's value an error message shows (a huge or alias-expanded value is cut).
MAX_ECHO = 200


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class MixtuneError(Exception):
    """Base class of the errors mixtune reports to a user (the CLI prints them without a traceback)."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path and self.field:
            where = f"{self.path}: field '{self.field}': "
        elif self.path:
            where = f"{self.path}: "
        elif self.field:
            where = f"field '{self.field}': "
        text = where + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(MixtuneError):
    """A YAML mixture, recipe or eval file is invalid."""


class DataError(MixtuneError):
    """A task file, split file, dataset or predictions file is malformed."""


class HeldOutError(MixtuneError):
    """A mixture would train on tasks that the evaluation holds out."""
