"""Imports point one way, down the data flow: a module imports only from its own stage or earlier.

The stages are the package's subpackages in `STAGES` order; the plain modules at the top level
(errors, atomic files, the shared value types) come before all of them. A module may import from
its own subpackage and any earlier one, never from a later one: the core never reaches up into the
command line or the ROS adapters, and the map never imports the replay loop that feeds it. Every
import counts, also those inside functions (they are lazy only to keep start-up cheap).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dve_perception

PACKAGE = "dve_perception"
#: Earliest first. Each subpackage may import from the top-level modules and the stages before it.
STAGES = (
    "model",  # the DVEFormer network, its checkpoints and generated weights
    "text",  # the CLIP text tower and its files
    "installed",  # what is in the models folder: resolving, checking, downloading
    "perception",  # RGB-D frame -> embeddings: preprocess, backends, postprocess, pipeline
    "messages",  # ROS message fields without ROS
    "mapping",  # the voxel map and its queries
    "simulation",  # synthetic scenes with ground truth
    "sources",  # recordings: rosbag2, folders, TF, trajectories
    "datasets",  # labelled RGB-D datasets on disk
    "evaluation",  # mIoU in 2D and on maps
    "training",  # distillation
    "settings",  # node configurations and their ROS parameters
    "replay",  # the offline loop: source -> pipeline -> map
    "node_logic",  # what the ROS nodes do, without ROS
    "cli",  # the dve-perception command
    "ros",  # the ROS 2 adapters and nodes
)
TOP_LEVEL = -1


def _source_root() -> Path:
    return Path(dve_perception.__file__).parent


def _stage_of(module: str) -> int | None:
    """The stage rank of a dve_perception module, TOP_LEVEL for plain top-level modules."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return TOP_LEVEL
    if parts[1] in STAGES:
        return STAGES.index(parts[1])
    return TOP_LEVEL


def _imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every dve_perception import in a file, relative ones resolved.

    `from dve_perception import cli` names the module `dve_perception.cli`: for `from X import n`
    the import is taken as `X.n` when X is the top-level package, else as X.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == PACKAGE:
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, name))
    return [(line, name) for line, name in found if name.split(".")[0] == PACKAGE]


def _modules() -> list[tuple[str, Path]]:
    """(dotted name, file) of every module in the source tree, read from disk, not imported."""
    root = _source_root()
    result = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        result.append((".".join((PACKAGE, *parts)), path))
    return result


def import_violations() -> list[str]:
    """Every import of a later stage, as 'file:line: module imports later-stage module'."""
    problems = []
    for module, path in _modules():
        own = _stage_of(module)
        for line, imported in _imported_modules(path, module):
            target = _stage_of(imported)
            if target is not None and target > own:
                problems.append(
                    f"{path.relative_to(_source_root().parent)}:{line}: {module} imports {imported}"
                )
    return problems


def test_every_subpackage_is_a_known_stage_with_a_one_line_docstring():
    root = _source_root()
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert sorted(STAGES) == packages
    for name in packages:
        doc = ast.get_docstring(ast.parse((root / name / "__init__.py").read_text("utf-8")))
        assert doc, f"{name}/__init__.py has no docstring"
        assert doc.splitlines()[0].endswith("."), f"{name}: first docstring line is not a sentence"


def test_the_top_level_holds_only_a_handful_of_plain_modules():
    root = _source_root()
    plain = sorted(p.name for p in root.glob("*.py"))
    assert len(plain) <= 10, plain


def test_no_module_imports_from_a_later_stage():
    assert import_violations() == []


def test_the_direction_check_finds_an_upward_import(tmp_path, monkeypatch):
    # The check itself must be able to fail: an upward import in a copied module is reported.
    root = tmp_path / PACKAGE
    (root / "mapping").mkdir(parents=True)
    (root / "__init__.py").write_text('"""Package."""\n')
    (root / "mapping" / "__init__.py").write_text('"""Map."""\n')
    (root / "mapping" / "bad.py").write_text(
        "from dve_perception import errors, ply\n"
        "def f():\n    from dve_perception.cli.main import main\n    from ..ros import x\n"
    )
    monkeypatch.setattr(dve_perception, "__file__", str(root / "__init__.py"))
    problems = import_violations()
    assert len(problems) == 2
    assert "bad.py:3: dve_perception.mapping.bad imports dve_perception.cli.main" in problems[0]
    assert "imports dve_perception.ros" in problems[1]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("dve_perception", TOP_LEVEL),
        ("dve_perception.errors", TOP_LEVEL),
        ("dve_perception.ros.x", len(STAGES) - 1),
        ("numpy", None),
    ],
)
def test_stage_of(module, expected):
    assert _stage_of(module) == expected
