"""Recording sources for offline replay: rosbag2 bags and RGB-D folders, without ROS.

`open_source(path)` picks the source from what is at `path`; `BagSource` and `FolderSource`
can also be used directly. The bag and folder modules are imported on first use, so importing
this package stays cheap (rosbags itself is only imported when a bag is opened or written).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dve_perception.errors import InputError
from dve_perception.sources.frame_source import FrameSource, SkippedFrame

if TYPE_CHECKING:
    from dve_perception.sources.bag import BagSource
    from dve_perception.sources.bag_writer import write_bag
    from dve_perception.sources.folder import FolderSource, write_folder_recording

__all__ = [
    "BagSource",
    "FolderSource",
    "FrameSource",
    "SkippedFrame",
    "open_source",
    "write_bag",
    "write_folder_recording",
]

_LAZY = {
    "BagSource": "dve_perception.sources.bag",
    "write_bag": "dve_perception.sources.bag_writer",
    "FolderSource": "dve_perception.sources.folder",
    "write_folder_recording": "dve_perception.sources.folder",
}
_FOLDER_OPTIONS = {"slop_s", "poses"}
_BAG_OPTIONS = {
    "color_topic",
    "depth_topic",
    "camera_info_topic",
    "world_frame",
    "camera_frame",
    "slop_s",
    "poses",
    "distro",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(path: str | os.PathLike[str], **options: Any) -> FrameSource:
    """Open a recording as a frame source, choosing the kind from what is at `path`.

    Args:
        path: a recording folder (with camera.json), a rosbag2 folder (with metadata.yaml), or
            a single .mcap / .db3 file.
        **options: keyword arguments of `FolderSource` (slop_s, poses) or `BagSource`
            (color_topic, depth_topic, camera_info_topic, world_frame, camera_frame, slop_s,
            poses, distro).

    Returns:
        The opened source.

    Raises:
        InputError: `path` is neither layout, or an option does not apply to its kind.
    """
    path = Path(path)
    if path.is_dir() and (path / "camera.json").is_file():
        kind, allowed, source_class = "folder", _FOLDER_OPTIONS, "FolderSource"
    elif (path.is_dir() and (path / "metadata.yaml").is_file()) or (
        path.is_file() and path.suffix in (".mcap", ".db3")
    ):
        kind, allowed, source_class = "rosbag2", _BAG_OPTIONS, "BagSource"
    else:
        raise InputError(
            f"{path} is not a recording: expected a folder with camera.json, rgb/, depth/ and "
            "poses.txt, or a rosbag2 (a folder with metadata.yaml, or a .mcap / .db3 file)"
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(
            f"option(s) {', '.join(unknown)} do not apply to a {kind} recording ({path}); "
            f"its options are: {', '.join(sorted(allowed))}"
        )
    return __getattr__(source_class)(path, **options)
