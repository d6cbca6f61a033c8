"""Class-name vocabularies: the names whose text embeddings segment an image or label a map."""

from __future__ import annotations

from pathlib import Path

from dve_perception.errors import InputError

__all__ = ["DEFAULT_VOCABULARY", "read_vocabulary"]

#: NYUv2's 40 classes, the default vocabulary of `sample`, the demo and the nodes.
DEFAULT_VOCABULARY = Path(__file__).parents[1] / "data" / "vocabularies" / "nyuv2_40.txt"


def read_vocabulary(spec: str | None) -> list[str]:
    """Read class names: None gives NYUv2's 40 classes; a file path gives one name per line.

    Any other string is taken as comma-separated names. Blank lines and `#` comments are skipped.
    """
    if spec is None:
        spec = str(DEFAULT_VOCABULARY)
    path = Path(spec)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise InputError(f"vocabulary {spec!r} holds no class names")
    if len(set(names)) != len(names):
        raise InputError(f"vocabulary {spec!r} repeats class names")
    return names
