"""What every recording source yields, so replay treats bags and folders alike.

A source iterates over its frames in time order and yields, for each colour image, either an
`RGBDFrame` with its pose or a `SkippedFrame` that says why that image cannot be used (no depth
within the pairing slop, no camera_info, no transform at its stamp, an unreadable message).
Skips are data, not exceptions: replay counts them by reason and goes on. Problems that make the
whole source unusable (no colour topic, an unreadable file) raise `InputError` when the source
is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from dve_perception.frames import RGBDFrame

__all__ = ["FrameSource", "SkippedFrame", "SourceItem"]


@dataclass(frozen=True)
class SkippedFrame:
    """A colour image that could not become a posed RGB-D frame.

    Attributes:
        stamp_ns: the colour image's stamp (0 if it could not be read).
        reason: a short, stable category used to count skips, e.g. "no depth within slop",
            "no camera_info", "no transform", "unreadable message".
        detail: the specific message for logs (which frame, which stamp, what was found).
    """

    stamp_ns: int
    reason: str
    detail: str = ""


SourceItem = RGBDFrame | SkippedFrame


class FrameSource(Protocol):
    """An iterable of posed RGB-D frames (or skips), in time order."""

    def __iter__(self) -> Iterator[SourceItem]:
        """Yield one item per colour image, in stamp order."""
        ...

    def describe(self) -> dict[str, object]:
        """Return what was chosen (path, topics, frames, counts) for the replay summary."""
        ...
