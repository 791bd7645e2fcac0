"""The package's layers (docs/architecture.md): every import of every module, function-level lazy imports
included, points to the same layer or a lower one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixtune"

#: Bottom to top, following the data. A module belongs to the longest entry that is it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mixtune", "mixtune.errors", "mixtune.io", "mixtune.console", "mixtune.limits", "mixtune.secrets",
              "mixtune.config", "mixtune.minilm", "mixtune.text", "mixtune.distributed")),
    ("tasks", ("mixtune.tasks",)),
    ("encodings", ("mixtune.encodings", "mixtune.tokenization")),
    ("specs", ("mixtune.mixtures.spec", "mixtune.eval.spec", "mixtune.models.spec", "mixtune.models.kind",
               "mixtune.train.spec", "mixtune.recipe")),
    ("mixtures", ("mixtune.mixtures",)),
    ("architectures", ("mixtune.architectures",)),
    ("models", ("mixtune.models",)),
    ("eval", ("mixtune.eval",)),
    ("train", ("mixtune.train",)),
    ("commands", ("mixtune.__main__", "mixtune.cli", "mixtune.cli_args", "mixtune.recipe_cli", "mixtune.preview",
                  "mixtune.mixtures.cli", "mixtune.mixtures.task_select.cli", "mixtune.eval.cli", "mixtune.train.cli")),
]

#: (importer, imported) edges that still point upward, each with the work that removes it.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest entry that is `module` or a package above it (the root only exactly)."""
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "mixtune" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def _target(name: str) -> str:
    """The module an imported dotted name lives in (`mixtune.models.load.context_length` -> its module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str, source: str) -> set[str]:
    """Every mixtune module `source` imports anywhere (top level, in functions, relative, import_module("..."))."""
    found: set[str] = set()
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {_target(name) for name in found if name == "mixtune" or name.startswith("mixtune.")}


def upward_imports(module: str, source: str) -> list[str]:
    """`importer -> imported (layer -> layer)` for each import of `source` into a higher layer."""
    own = layer_of(module)
    assert own is not None, module
    bad = []
    for target in sorted(imports_of(module, source)):
        theirs = layer_of(target)
        if theirs is not None and theirs > own:
            bad.append(f"{module} -> {target} ({LAYERS[own][0]} -> {LAYERS[theirs][0]})")
    return bad


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_import_points_to_a_higher_layer() -> None:
    known = {f"{a} -> {b}" for a, b in KNOWN_UPWARD}
    found = [edge for module, path in MODULES.items() for edge in upward_imports(module, path.read_text("utf-8"))]
    assert [e for e in found if e.split(" (")[0] not in known] == []
    assert {e.split(" (")[0] for e in found} == known, "a known exception is gone: delete it from KNOWN_UPWARD"


def test_the_walk_sees_the_package_imports() -> None:
    graph = {m: imports_of(m, p.read_text("utf-8")) for m, p in MODULES.items()}
    assert "mixtune.models.kind" in graph["mixtune.recipe_cli"]  # imported inside a function
    assert "mixtune.errors" in graph["mixtune.config"]  # `from mixtune.errors import ConfigError`
    assert "mixtune.mixtures.spec" in graph["mixtune.mixtures"]  # a package re-exporting its modules


@pytest.mark.parametrize(("module", "source", "upward"), [
    ("mixtune.models.load", "def f():\n    from mixtune.train.run import run_training\n", True),
    ("mixtune.recipe", "import mixtune.train.deepspeed\n", True),
    ("mixtune.eval.runner", "from mixtune.models import load\n", False),
    ("mixtune.eval.runner", "from ..train import trainer\n", True),
    ("mixtune.tasks.base", "from . import cache\n", False),
    ("mixtune.cli", "importlib.import_module('mixtune.train.cli')\n", False),
    ("mixtune.encodings", "importlib.import_module('mixtune.eval.spec')\n", True),
])
def test_an_upward_import_is_caught(module: str, source: str, upward: bool) -> None:
    assert bool(upward_imports(module, source)) is upward


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md says what each module owns: every module of the package and of its subpackages
    (a sub-subpackage is described as a folder) is named there in backticks."""
    import re

    page = (PACKAGE.parent / "docs" / "architecture.md").read_text("utf-8")
    named = set(re.findall(r"`([A-Za-z_/.]+?)/?`", page))
    missing = []
    for module in MODULES:
        parts = module.split(".")[1:]
        if not parts or len(parts) > 2 or MODULES[module].name == "__init__.py" and len(parts) > 1:
            continue
        if parts[-1] not in named and "/".join(parts) not in named:
            missing.append(module)
    assert missing == []
