"""Which package may import which (ARCHITECTURE.md), read from the source by an AST walk.

Every ``import`` and ``from ... import`` counts, also those inside functions and
``TYPE_CHECKING`` blocks. The layers: ``offline.data`` <- ``training`` <- the rest of
``offline`` <- ``bench``; ``recsvc`` (online) stands apart and meets ``offline`` only through
the bundle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("recsvc", "offline", "training", "loadtest", "bench")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``path`` imports; ``from a import b`` gives ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: relative import; write the full name"
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


IMPORTS = {
    path.relative_to(REPO).as_posix(): imports(path)
    for package in PACKAGES
    for path in sorted((REPO / package).rglob("*.py"))
}


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# rule -> (folders it applies to, whether an imported name breaks it)
RULES: dict[str, tuple[tuple[str, ...], Callable[[str], bool]]] = {
    "recsvc imports no offline, training, bench, loadtest or tensorflow": (
        ("recsvc/",),
        lambda name: under(name, "offline", "training", "bench", "loadtest", "tensorflow"),
    ),
    "training imports nothing of offline but offline.data": (
        ("training/",),
        lambda name: under(name, "offline") and not under(name, "offline.data"),
    ),
    "offline.data imports no other part of offline, nor training": (
        ("offline/data/",),
        lambda name: under(name, "offline", "training") and not under(name, "offline.data"),
    ),
    "offline and training import no loadtest or bench": (
        ("offline/", "training/"),
        lambda name: under(name, "loadtest", "bench"),
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_layering(rule: str) -> None:
    folders, breaks = RULES[rule]
    found = [
        f"{path}:{line}: {name}"
        for path, names in IMPORTS.items()
        if path.startswith(folders)
        for line, name in names
        if breaks(name)
    ]
    assert not found, f"{rule}:\n" + "\n".join(found)


def test_offline_config_loads_without_tensorflow() -> None:
    code = "import sys, offline.config; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


def test_the_local_engine_loads_without_pyspark() -> None:
    """PySpark is an extra: the pipeline and its sources import it only for --engine spark."""
    code = (
        "import sys, offline.pipeline, offline.sources.registry, offline.cli; "
        "print('pyspark' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"
