"""The documented commands work: every shell block tagged `<!-- docs-test -->` in README.md and docs/*.md
runs, line by line, in a fresh folder holding copies of data_mixtures/ and recipes/.

Blocks that need a GPU, a model hub or a full SuperNI checkout are left untagged; CI runs the README's
set-up commands themselves (.ci/run runs the quickstart).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

TAG = "<!-- docs-test -->"
BLOCK = re.compile(re.escape(TAG) + r"\s*```(?:bash|sh|console)\n(.*?)```", re.S)


def tagged_blocks() -> list[tuple[str, str]]:
    """(document name, block text) for every tagged shell block."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, match in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            found.append((f"{doc.relative_to(REPO)}#{i + 1}", match.group(1)))
    return found


def commands(block: str) -> list[str]:
    """The block's commands: comments and blank lines dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_there_are_tagged_blocks() -> None:
    names = [name for name, _ in tagged_blocks()]
    assert any(name.startswith("README.md") for name in names)
    assert len(names) >= 3


@pytest.mark.integration
@pytest.mark.parametrize(("name", "block"), tagged_blocks(), ids=[n for n, _ in tagged_blocks()])
def test_documented_commands_run(name: str, block: str, tmp_path: Path) -> None:
    for folder in ("data_mixtures", "recipes"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "MIXTUNE_DOCS_TEST": "1"}
    for command in commands(block):
        if command.startswith(". .venv/bin/activate"):
            continue  # the test already runs inside the environment
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name}: `{command}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
