"""Vocabularies: the bundled default, comma-separated names and files."""

from __future__ import annotations

import pytest

from dve_perception.errors import InputError
from dve_perception.text.vocabulary import read_vocabulary


def test_vocabulary_sources(tmp_path):
    assert len(read_vocabulary(None)) == 40 and read_vocabulary(None)[19] == "floor mat"
    assert read_vocabulary(" red mug , sofa ") == ["red mug", "sofa"]
    path = tmp_path / "vocab.txt"
    path.write_text("# my classes\nchair\n\ntable\n")
    assert read_vocabulary(str(path)) == ["chair", "table"]
    with pytest.raises(InputError, match="holds no class names"):
        read_vocabulary(" , ")
    with pytest.raises(InputError, match="repeats class names"):
        read_vocabulary("a,b,a")
