"""The package imports the same from any folder, the repository root included.

The repository root holds the ament package's folder `dve_perception/`, which has no `__init__.py`.
With the library at `dve_perception/dve_perception/`, Python started in the root took that folder
for an empty namespace package ahead of the editable install, so `from dve_perception.mapping
import EmbeddingMap` failed there and pytest collected nothing. The library now lives under
`src/`, which setuptools installs as a plain path entry: a real package found on the path always
wins over a namespace folder. These tests run Python where a user would, in fresh processes.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dve_perception

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SOURCE = Path(dve_perception.__file__).resolve().parent


def readme_imports() -> list[str]:
    """Every import statement of the README's Python snippets."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    statements = []
    for block in blocks:
        for node in ast.parse(block).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                statements.append(ast.unparse(node))
    return statements


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_readme_has_python_snippets_that_import_the_package():
    statements = readme_imports()
    assert any("dve_perception.mapping" in s for s in statements)
    assert any("dve_perception.model.checkpoint" in s for s in statements)


@pytest.mark.parametrize("where", ["repository root", "another folder"])
def test_readme_snippet_imports_work_from(where, tmp_path):
    cwd = REPO if where == "repository root" else tmp_path
    script = "\n".join(
        [*readme_imports(), "import dve_perception", "print(dve_perception.__file__)"]
    )
    result = _run([sys.executable, "-c", script], cwd)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve().parent == SOURCE


def test_the_suite_collects_from_the_repository_root():
    result = _run([sys.executable, "-m", "pytest", "--collect-only", "-q"], REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = re.search(r"^(\d+) tests? collected", result.stdout, re.M)
    assert collected and int(collected.group(1)) > 1000, result.stdout[-2000:]
    # Markers come from test/conftest.py wherever pytest starts: none is unknown.
    assert "PytestUnknownMarkWarning" not in result.stdout + result.stderr
