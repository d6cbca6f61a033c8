"""Targets met or missed, as a benchmark prints them and as a JSON file that gpu_check.py reads.

A benchmark adds one `Verdict` per target it judges and, given `--verdicts FILE`, writes them
all; `gpu_check.py` builds its verdict table from these files instead of parsing printed tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dve_perception.atomic_file import atomic_write


@dataclass(frozen=True)
class Verdict:
    """One measured value against its target."""

    check: str  # what was measured, e.g. "reducedres: torch fp16 speed-up vs fp32 eager"
    value: float
    unit: str  # "x", "ms", ...
    target: str  # e.g. ">= 2x"
    met: bool | None  # None: reported without a target on this device

    def line(self) -> str:
        """'check: value unit (target target): met|MISS'."""
        verdict = "reported" if self.met is None else ("met" if self.met else "MISS")
        return f"{self.check}: {self.value:.3g} {self.unit} (target {self.target}): {verdict}"


class Verdicts:
    """The verdicts of one benchmark run, in the order they were added."""

    def __init__(self) -> None:
        self.items: list[Verdict] = []

    def add(self, check: str, value: float, unit: str, target: str, met: bool | None) -> Verdict:
        """Record a verdict and return it (its `line()` is what the benchmark prints)."""
        verdict = Verdict(check, float(value), unit, target, met)
        self.items.append(verdict)
        return verdict

    def write(self, path: str | os.PathLike, benchmark: str) -> None:
        """Write {"benchmark": ..., "verdicts": [...]} to `path` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": benchmark, "verdicts": [asdict(v) for v in self.items]}
        with atomic_write(path) as f:
            f.write(json.dumps(payload, indent=1).encode("utf-8"))


def read_verdicts(path: str | os.PathLike) -> list[Verdict]:
    """The verdicts a benchmark wrote with `Verdicts.write`."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Verdict(**item) for item in payload["verdicts"]]
