"""Open a rosbag2 with `rosbags`, choose its camera topics, and decode its image messages.

The helpers of `BagSource` that deal with the bag as a container: `BagFile` opens it (turning
every failure into `InputError`) and deserialises messages; `choose_topics` picks the colour,
depth and camera_info topics, given or detected:

- colour candidates: Image topics whose first message has a colour encoding (rgb8, bgr8,
  rgba8, bgra8, mono8) and jpeg/png CompressedImage topics; depth candidates: Image topics in
  16UC1, mono16 or 32FC1 and compressedDepth topics;
- among several, names containing "color", then "rgb", then "image" win for colour, and
  "aligned_depth", then "depth" for depth; then raw Image topics win over CompressedImage;
- the CameraInfo topic is the one in the colour topic's namespace (/camera/color/camera_info
  for /camera/color/image_raw), else the only one.

Anything left ambiguous raises `InputError` listing the candidates and the option to set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dve_perception.errors import BackendUnavailableError, InputError
from dve_perception.messages.conversions import compressed_image_kind
from dve_perception.perception.preprocess import COLOR_ENCODINGS, DEPTH_ENCODINGS

__all__ = ["BagFile", "Topics", "choose_topics"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
INFO = "sensor_msgs/msg/CameraInfo"
TF = "tf2_msgs/msg/TFMessage"
_COLOR_ENCODINGS = (*COLOR_ENCODINGS, "mono8")
_DISTROS = ("humble", "jazzy")
_EXPECTED = {
    "colour": f"a colour image (Image in {', '.join(_COLOR_ENCODINGS)}, or a jpeg/png "
    "CompressedImage)",
    "depth": f"a depth image (Image in {', '.join(DEPTH_ENCODINGS)}, or a compressedDepth "
    "CompressedImage)",
}
_RECOVER_HINT = (
    "if the recording was cut short (recorder killed, disk full), recover it first "
    "(mcap recover for .mcap; sqlite3 .recover for .db3)"
)


class BagFile:
    """A rosbag2 on disk: where it is, its storage, and how to open and deserialise it.

    Args:
        path: a rosbag2 directory (metadata.yaml) or a single .mcap / .db3 file.
        distro: "humble" or "jazzy": the message definitions used when the bag has none.

    Raises:
        InputError: the path is not a bag or the distro is unknown.
        BackendUnavailableError: rosbags is not installed.
    """

    def __init__(self, path: Path, distro: str) -> None:
        if distro not in _DISTROS:
            raise InputError(f"distro must be one of {list(_DISTROS)}, got {distro!r}")
        self.path, self.distro = path, distro
        if path.is_dir():
            if not (path / "metadata.yaml").is_file():
                raise InputError(
                    f"{path} is a folder without metadata.yaml; expected a rosbag2 folder "
                    "(metadata.yaml with .mcap or .db3 files) or a single .mcap / .db3 file"
                )
            self.storage = "sqlite3" if any(path.glob("*.db3*")) else "mcap"
        elif path.is_file() and path.suffix in (".mcap", ".db3"):
            self.storage = "mcap" if path.suffix == ".mcap" else "sqlite3"
        else:
            raise InputError(
                f"bag {path} does not exist or is not a rosbag2 folder or .mcap / .db3 file"
            )
        try:
            from rosbags.highlevel import AnyReader
            from rosbags.typesys import Stores, get_typestore
        except ImportError as err:
            raise BackendUnavailableError(
                "reading bags needs the rosbags package: pip install rosbags"
            ) from err
        self._any_reader = AnyReader
        self._typestore = get_typestore(getattr(Stores, f"ROS2_{distro.upper()}"))
        self.reader: Any = None

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        """Open the bag with rosbags' AnyReader for the duration of a `with` block.

        Raises:
            InputError: the bag cannot be opened (missing files, bad metadata, truncated).
        """
        try:
            reader = self._any_reader([self.path], default_typestore=self._typestore)
            reader.open()
        except Exception as err:  # rosbags and its storages raise many kinds on bad files
            raise InputError(f"cannot read bag {self.path}: {err}; {_RECOVER_HINT}") from err
        self.reader = reader
        try:
            yield reader
        finally:
            self.reader = None
            with contextlib.suppress(Exception):
                reader.close()

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Deserialise a message of the open bag, or return None if it is corrupt."""
        try:
            return self.deserialize_or_raise(raw, msgtype)
        except InputError:
            return None

    def deserialize_or_raise(self, raw: bytes, msgtype: str) -> Any:
        """Deserialise a message of the open bag.

        Raises:
            InputError: the bytes do not decode as `msgtype`.
        """
        try:
            return self.reader.deserialize(raw, msgtype)
        except Exception as err:  # a corrupt payload can fail anywhere in the deserialiser
            raise InputError(f"cannot deserialise a {msgtype} message: {err}") from err


@dataclass(frozen=True)
class Topics:
    """The chosen topics, their message types and their message counts in the bag's index."""

    color: str
    depth: str
    info: str
    tf_topics: tuple[str, ...]
    msgtypes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def name(self, role: str) -> str:
        """The topic of a role: color, depth, camera_info, tf or tf_static."""
        roles = {"color": self.color, "depth": self.depth, "camera_info": self.info}
        return roles.get(role, f"/{role}")

    def connections(self, reader: Any, role: str) -> list[Any]:
        """The open reader's connections of a role (none if the topic is absent)."""
        if role in ("tf", "tf_static") and self.name(role) not in self.tf_topics:
            return []
        info = reader.topics.get(self.name(role))
        return list(info.connections) if info else []

    def msgtype(self, role: str) -> str:
        """The message type of a role's topic."""
        return self.msgtypes.get(self.name(role), TF)

    def expected_count(self, role: str) -> int:
        """How many messages the bag's index lists for a role's topic."""
        return self.counts.get(self.name(role), 0)

    def as_dict(self) -> dict[str, object]:
        """The chosen topics, for describe()."""
        return {
            "color": self.color,
            "depth": self.depth,
            "camera_info": self.info,
            "tf": list(self.tf_topics),
        }


def choose_topics(
    bag: BagFile, reader: Any, color: str | None, depth: str | None, info: str | None
) -> Topics:
    """Validate the given topics and detect the others (rules in the module docstring).

    Raises:
        InputError: a named topic is missing or of the wrong type or encoding; no candidate or
            several candidates for a topic that was not given.
    """
    available = {name: topic.msgtype for name, topic in reader.topics.items()}
    for option, name in (
        ("color_topic", color),
        ("depth_topic", depth),
        ("camera_info_topic", info),
    ):
        if name is not None and name not in available:
            raise InputError(f"{option}={name!r} is not in the bag; {_listing(available)}")
    images = sorted(n for n, t in available.items() if t in (IMAGE, COMPRESSED))
    kinds: dict[str, tuple[str | None, str]] = {}

    def kind(topic: str) -> tuple[str | None, str]:
        if topic not in kinds:
            kinds[topic] = _image_kind(bag, reader, topic)
        return kinds[topic]

    color = _resolve(
        "colour", color, "color_topic", images, kind, ("color", "rgb", "image"), available
    )
    depth = _resolve(
        "depth", depth, "depth_topic", images, kind, ("aligned_depth", "depth"), available
    )
    if color == depth:
        raise InputError(
            f"color_topic and depth_topic are both {color!r}; they must be different topics"
        )
    info = _resolve_info(info, color, available)
    tf_topics = tuple(t for t in ("/tf", "/tf_static") if available.get(t) == TF)
    counts = {name: topic.msgcount for name, topic in reader.topics.items()}
    return Topics(color, depth, info, tf_topics, available, counts)


def _resolve(
    role: str,
    given: str | None,
    option: str,
    images: list[str],
    kind: Callable[[str], tuple[str | None, str]],
    keywords: tuple[str, ...],
    available: dict[str, str],
) -> str:
    wanted = "color" if role == "colour" else "depth"
    if given is not None:
        if available[given] not in (IMAGE, COMPRESSED):
            raise InputError(
                f"{option}={given!r} is a {available[given]}; expected {IMAGE} or {COMPRESSED}"
            )
        found, description = kind(given)
        if found != wanted:
            raise InputError(f"{option}={given!r} has {description}; expected {_EXPECTED[role]}")
        return given
    candidates = [t for t in images if kind(t)[0] == wanted]
    if not candidates:
        found = ", ".join(f"{t} ({kind(t)[1]})" for t in images) or "none"
        raise InputError(
            f"no {role} image topic in the bag (image topics: {found}); pass {option}="
        )
    for keyword in keywords:
        matching = [t for t in candidates if keyword in t.lower()]
        if matching:
            candidates = matching
            break
    raw = [t for t in candidates if available[t] == IMAGE]
    candidates = raw or candidates
    if len(candidates) > 1:
        raise InputError(
            f"several {role} topics could be meant: {', '.join(candidates)}; choose one with "
            f"{option}="
        )
    return candidates[0]


def _resolve_info(given: str | None, color: str, available: dict[str, str]) -> str:
    if given is not None:
        if available[given] != INFO:
            raise InputError(
                f"camera_info_topic={given!r} is a {available[given]}; expected {INFO}"
            )
        return given
    infos = sorted(n for n, t in available.items() if t == INFO)
    if not infos:
        raise InputError(
            f"the bag has no {INFO} topic, so the colour intrinsics are unknown; record the "
            f"camera's camera_info (e.g. /camera/color/camera_info); {_listing(available)}"
        )
    namespaces = {n: n.rsplit("/", 1)[0] + "/" for n in infos}
    matching = [n for n in infos if color.startswith(namespaces[n])]
    if matching:
        longest = max(len(namespaces[n]) for n in matching)
        matching = [n for n in matching if len(namespaces[n]) == longest]
    candidates = matching or (infos if len(infos) == 1 else [])
    if len(candidates) != 1:
        raise InputError(
            f"cannot tell which camera_info belongs to {color} among {', '.join(infos)}; "
            "choose one with camera_info_topic="
        )
    return candidates[0]


def _image_kind(bag: BagFile, reader: Any, topic: str) -> tuple[str | None, str]:
    """("color" | "depth" | None, what the first message holds) of an image topic."""
    connections = reader.topics[topic].connections
    messages = reader.messages(connections=connections)
    try:
        first = next(messages, None)
    except Exception as err:  # a damaged bag: the topic is unusable, say why
        return None, f"an unreadable first message ({err})"
    finally:
        messages.close()  # release the storage's cursor now, not at garbage collection
    if first is None:
        return None, "no messages"
    msg = bag.deserialize(first[2], first[0].msgtype)
    if msg is None:
        return None, "an undecodable first message"
    if hasattr(msg, "format"):
        return compressed_image_kind(msg.format), f"format {msg.format!r}"
    encoding = str(msg.encoding)
    found = "color" if encoding in _COLOR_ENCODINGS else None
    found = "depth" if encoding in DEPTH_ENCODINGS else found
    return found, f"encoding {encoding!r}"


def _listing(available: dict[str, str]) -> str:
    listed = ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(available.items()))
    return f"its topics are: {listed or 'none'}"
