"""Posed RGB-D frames from a rosbag2 (mcap or sqlite3), read without ROS through `rosbags`.

Opening a bag chooses the topics (given, or detected from the message types and encodings,
see `bag_topics`), then reads it once (pass 1): /tf and /tf_static into a `TransformTree`,
every camera_info, and the header stamps (not the receive times) of the colour and depth
images. From these it plans, per colour image, its depth partner (nearest stamp within the
slop), its camera_info (nearest in time among those of the colour image's size) and its pose
T_world_cam at the colour stamp, or why it must be skipped. Iterating reads the images again
(pass 2) and holds a message only until its partner arrives, so memory stays bounded.

Skip reasons: "no depth within slop", "no camera_info", "no transform", "unreadable message",
"size mismatch". A bag that cannot be opened raises `InputError`; damage found while reading
ends the iteration early with a warning and `describe()["truncated"] = True`, keeping the
frames read before it.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dve_perception.errors import InputError, TransformUnavailableError
from dve_perception.frames import RGBDFrame
from dve_perception.messages.conversions import (
    camera_info_size,
    camera_info_to_K,
    decode_color,
    decode_depth,
    stamp_to_ns,
    transform_to_matrix,
)
from dve_perception.sources import bag_topics
from dve_perception.sources.frame_source import SkippedFrame, SourceItem
from dve_perception.sources.pairing import pair_by_stamp
from dve_perception.sources.tf_tree import TransformTree
from dve_perception.sources.trajectory import read_tum_trajectory, trajectory_tree

__all__ = ["BagSource"]

_LOG = logging.getLogger(__name__)


class _Image(NamedTuple):
    """What pass 1 keeps of a colour or depth message (no pixels)."""

    stamp_ns: int | None  # None: the message could not be deserialised
    frame_id: str
    size: tuple[int, int] | None  # None for CompressedImage (known only once decoded)


class _Info(NamedTuple):
    stamp_ns: int
    frame_id: str
    K: np.ndarray | None
    size: tuple[int, int] | None
    problem: str  # why K or size is None


class _Plan(NamedTuple):
    """A colour image that should become a frame once its messages are read again."""

    color: int  # ordinal of the colour message in its topic
    depth: int  # ordinal of the depth partner
    stamp_ns: int
    K: np.ndarray
    info_size: tuple[int, int]
    T_world_cam: np.ndarray


class BagSource:
    """Posed RGB-D frames from a rosbag2 directory or a single .mcap / .db3 file.

    Args:
        path: the bag directory (with metadata.yaml) or a .mcap / .db3 file.
        color_topic: the colour Image or CompressedImage topic; None detects it.
        depth_topic: the depth topic registered to colour (16UC1, mono16, 32FC1 or
            compressedDepth); None detects it, preferring aligned depth.
        camera_info_topic: the colour camera's CameraInfo; None picks the one next to the
            colour topic.
        world_frame: the fixed frame of the poses; None takes the root of camera_frame's tree.
        camera_frame: the optical frame of the colour images; None takes the camera_info's
            header.frame_id (else the colour image's).
        slop_s: the largest accepted stamp difference between colour and depth, seconds.
        poses: a TUM trajectory of T_world_cam to use instead of /tf.
        distro: "humble" or "jazzy": the message definitions for bags that do not embed them.

    Raises:
        InputError: unreadable bag, missing or ambiguous topics, an unsupported encoding, no
            TF (and no `poses`), or frames that are not connected in the TF tree.
        BackendUnavailableError: rosbags is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        color_topic: str | None = None,
        depth_topic: str | None = None,
        camera_info_topic: str | None = None,
        world_frame: str | None = None,
        camera_frame: str | None = None,
        slop_s: float = 0.02,
        poses: str | os.PathLike[str] | None = None,
        distro: str = "humble",
    ) -> None:
        if not (isinstance(slop_s, (int, float)) and math.isfinite(slop_s) and slop_s >= 0):
            raise InputError(f"slop_s must be a non-negative number of seconds, got {slop_s!r}")
        self.path = Path(path)
        self._bag = bag_topics.BagFile(self.path, distro)
        self._slop_ns = round(slop_s * 1e9)
        self.poses = Path(poses) if poses is not None else None
        self.truncated = False
        self.error: str | None = None
        self._counts: Counter[str] = Counter()
        with self._bag.open() as reader:
            self.topics = bag_topics.choose_topics(
                self._bag, reader, color_topic, depth_topic, camera_info_topic
            )
            if self.poses is None and not self.topics.tf_topics:
                raise InputError(
                    f"the bag {self.path} has no /tf or /tf_static; pass a TUM trajectory with "
                    "--poses (poses= in Python)"
                )
            color, depth, infos, tree = self._scan(reader)
        self.camera_frame = camera_frame or _default_camera_frame(
            infos, color, self.poses is not None
        )
        self._tree, self.world_frame = self._pose_tree(tree, world_frame)
        self._pass1_skips, self._plans, self._order = self._make_plan(color, depth, infos)

    def __iter__(self) -> Iterator[SourceItem]:
        """Yield one frame or skip per colour image, in stamp order."""
        by_color = {p.color: k for k, p in enumerate(self._plans)}
        by_depth = {p.depth: k for k, p in enumerate(self._plans)}
        ready: dict[int, SourceItem] = dict(self._pass1_skips)
        pending: dict[int, dict[str, bytes]] = {}
        position, ordinal = 0, Counter[str]()
        with self._bag.open() as reader:
            for role, raw in self._stream(reader, ("color", "depth")):
                index = ordinal[role]
                ordinal[role] += 1
                key = (by_color if role == "color" else by_depth).get(index)
                if key is None:
                    continue  # not part of any planned frame: drop it unread
                pending.setdefault(key, {})[role] = raw
                if len(pending[key]) == 2:
                    ready[key] = self._build(self._plans[key], pending.pop(key))
                while position < len(self._order) and self._order[position] in ready:
                    yield ready.pop(self._order[position])
                    position += 1
        for key in self._order[position:]:
            if key not in ready:  # its messages were never read: the bag ended early
                plan = self._plans[key]
                ready[key] = SkippedFrame(
                    plan.stamp_ns, "unreadable message", "the bag ended before this image"
                )
            yield ready.pop(key)

    def __len__(self) -> int:
        """Return the number of items iteration yields (one per colour image)."""
        return len(self._order)

    def describe(self) -> dict[str, object]:
        """Return the bag, chosen topics and frames, message counts and the truncated flag."""
        return {
            "kind": "rosbag2",
            "path": str(self.path),
            "storage": self._bag.storage,
            "distro": self._bag.distro,
            "topics": self.topics.as_dict(),
            "world_frame": self.world_frame,
            "camera_frame": self.camera_frame,
            "poses": str(self.poses) if self.poses else None,
            "message_counts": dict(self._counts),
            "planned_frames": len(self._plans),
            "truncated": self.truncated,
            "error": self.error,
        }

    def _stream(self, reader: Any, roles: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
        """Yield (role, raw message) of the given roles; stop at damage, marking truncation."""
        by_role = {role: self.topics.connections(reader, role) for role in roles}
        role_of = {self.topics.name(role): role for role in roles}
        wanted = [c for conns in by_role.values() for c in conns]
        if not wanted:
            return  # rosbags reads every topic when given no connections
        counts: Counter[str] = Counter()
        try:
            for connection, _, raw in reader.messages(connections=wanted):
                role = role_of[connection.topic]
                counts[role] += 1
                yield role, raw
        except Exception as err:  # storages raise many kinds of errors on damaged files
            self._mark_truncated(f"reading failed after {sum(counts.values())} messages: {err}")
            return
        short = [r for r in roles if counts[r] < self.topics.expected_count(r)]
        if short:  # rosbags may skip a damaged mcap chunk without raising
            found = {r: f"{counts[r]}/{self.topics.expected_count(r)}" for r in short}
            self._mark_truncated(f"fewer messages than the index lists: {found}")

    def _mark_truncated(self, reason: str) -> None:
        if not self.truncated:
            _LOG.warning("bag %s is damaged or truncated; %s", self.path, reason)
        self.truncated, self.error = True, reason

    def _scan(self, reader: Any) -> tuple[list[_Image], list[_Image], list[_Info], TransformTree]:
        """Pass 1: TF, camera_infos and image stamps, deserialising one message at a time."""
        color: list[_Image] = []
        depth: list[_Image] = []
        infos: list[_Info] = []
        tree, samples = TransformTree(), {}
        roles = ("color", "depth", "camera_info") + (
            ("tf", "tf_static") if self.poses is None else ()
        )
        ignored: list[str] = []
        for role, raw in self._stream(reader, roles):
            self._counts[role] += 1
            msg = self._bag.deserialize(raw, self.topics.msgtype(role))
            if role in ("color", "depth"):
                (color if role == "color" else depth).append(_image_entry(msg))
            elif role == "camera_info":
                infos.append(_info_entry(msg))
            elif msg is not None:
                ignored += _add_transforms(tree, samples, msg, static=role == "tf_static")
        if ignored:  # one warning, not one per message: a bad publisher repeats its mistake
            _LOG.warning("ignored %d invalid transforms, e.g. %s", len(ignored), ignored[0])
        for (parent, child), (stamps, T) in samples.items():
            tree.add_samples(parent, child, np.array(stamps, dtype=np.int64), np.stack(T))
        return color, depth, infos, tree

    def _pose_tree(self, tree: TransformTree, world_frame: str | None) -> tuple[TransformTree, str]:
        camera = self.camera_frame
        if self.poses is not None:
            stamps, T = read_tum_trajectory(self.poses)
            world = world_frame or "world"
            return trajectory_tree(stamps, T, world, camera), world
        if camera not in tree.frames:
            raise InputError(
                f"camera frame {camera!r} is not in the bag's TF tree (frames: "
                f"{', '.join(tree.frames) or 'none'}); pass camera_frame= or poses="
            )
        world = world_frame or tree.root_of(camera)
        if world not in tree.frames or tree.root_of(world) != tree.root_of(camera):
            raise InputError(
                f"world frame {world!r} is not connected to camera frame {camera!r} in the "
                f"bag's TF tree (frames: {', '.join(tree.frames)}); pass world_frame="
            )
        return tree, world

    def _make_plan(
        self, color: list[_Image], depth: list[_Image], infos: list[_Info]
    ) -> tuple[dict[int, SkippedFrame], list[_Plan], list[int]]:
        """Decide every colour image's partners and pose, or its skip reason."""
        readable = [i for i, c in enumerate(color) if c.stamp_ns is not None]
        depth_ok = [j for j, d in enumerate(depth) if d.stamp_ns is not None]
        pairs = pair_by_stamp(
            np.array([color[i].stamp_ns for i in readable], dtype=np.int64),
            np.array([depth[j].stamp_ns for j in depth_ok], dtype=np.int64),
            self._slop_ns,
        )
        partner = {
            i: (None if p is None else depth_ok[p]) for i, p in zip(readable, pairs, strict=True)
        }
        info_index = _InfoIndex(infos, self.topics.info)
        skips: dict[int, SkippedFrame] = {}
        plans: list[_Plan] = []
        order_keys: list[tuple[int, int, int]] = []
        last_stamp = 0  # an unreadable image keeps its place in the bag, after the one before
        for i, entry in enumerate(color):
            last_stamp = entry.stamp_ns if entry.stamp_ns is not None else last_stamp
            result = self._plan_one(i, entry, partner.get(i), info_index)
            if isinstance(result, SkippedFrame):
                key = -1 - len(skips)
                skips[key] = result
            else:
                key = len(plans)
                plans.append(result)
            order_keys.append((last_stamp, i, key))
        return skips, plans, [key for _, _, key in sorted(order_keys)]

    def _plan_one(
        self, index: int, entry: _Image, depth: int | None, infos: _InfoIndex
    ) -> _Plan | SkippedFrame:
        stamp = entry.stamp_ns
        if stamp is None:
            return SkippedFrame(0, "unreadable message", f"colour message {index} is corrupt")
        if depth is None:
            detail = f"no depth image within {self._slop_ns / 1e9:g} s of the colour image"
            return SkippedFrame(stamp, "no depth within slop", detail)
        info = infos.nearest(stamp, entry.size)
        if isinstance(info, SkippedFrame):
            return SkippedFrame(stamp, info.reason, info.detail)
        try:
            T = self._tree.lookup(self.world_frame, self.camera_frame, stamp)
        except TransformUnavailableError as err:
            return SkippedFrame(stamp, "no transform", str(err))
        assert info.K is not None and info.size is not None  # nearest() returns usable ones
        return _Plan(index, depth, stamp, info.K, info.size, T)

    def _build(self, plan: _Plan, raw: dict[str, bytes]) -> SourceItem:
        """Decode a planned colour/depth pair into a frame, or say why it cannot be one."""
        try:
            color = self._bag.deserialize_or_raise(raw["color"], self.topics.msgtype("color"))
            depth = self._bag.deserialize_or_raise(raw["depth"], self.topics.msgtype("depth"))
            rgb = decode_color(color)
            depth_m = decode_depth(depth)
        except InputError as err:
            return SkippedFrame(plan.stamp_ns, "unreadable message", str(err))
        sizes = {"colour": rgb.shape[:2], "depth": depth_m.shape, "camera_info": plan.info_size}
        if len({tuple(s) for s in sizes.values()}) > 1:
            found = ", ".join(f"{k} {s[0]}x{s[1]}" for k, s in sizes.items())
            return SkippedFrame(plan.stamp_ns, "size mismatch", found)
        return RGBDFrame(rgb, depth_m, plan.K, plan.stamp_ns, self.camera_frame, plan.T_world_cam)


class _InfoIndex:
    """The usable camera_infos by image size, for nearest-in-time lookups."""

    def __init__(self, infos: list[_Info], topic: str) -> None:
        usable = sorted((i for i in infos if i.K is not None), key=lambda i: i.stamp_ns)
        self._problems = sorted({i.problem for i in infos if i.K is None}) or ["no messages"]
        self._topic = topic
        self._by_size: dict[object, list[_Info]] = {None: usable}
        for info in usable:
            self._by_size.setdefault(info.size, []).append(info)
        self._stamps = {k: np.array([i.stamp_ns for i in v]) for k, v in self._by_size.items()}

    def nearest(self, stamp_ns: int, size: tuple[int, int] | None) -> _Info | SkippedFrame:
        """The camera_info nearest in time with this size (any size if None), or why none."""
        if not self._by_size[None]:
            detail = f"{self._topic}: {'; '.join(self._problems)}"
            return SkippedFrame(stamp_ns, "no camera_info", detail)
        if size not in self._by_size:
            found = sorted({i.size for i in self._by_size[None]})
            detail = f"colour image is {size}, camera_info is {', '.join(map(str, found))}"
            return SkippedFrame(stamp_ns, "size mismatch", detail)
        stamps, candidates = self._stamps[size], self._by_size[size]
        k = int(np.searchsorted(stamps, stamp_ns))
        nearby = [j for j in (k - 1, k) if 0 <= j < len(stamps)]
        return candidates[min(nearby, key=lambda j: abs(int(stamps[j]) - stamp_ns))]


def _image_entry(msg: Any) -> _Image:
    if msg is None:
        return _Image(None, "", None)
    size = (int(msg.height), int(msg.width)) if hasattr(msg, "height") else None
    return _Image(stamp_to_ns(msg.header.stamp), msg.header.frame_id.lstrip("/"), size)


def _info_entry(msg: Any) -> _Info:
    if msg is None:
        return _Info(0, "", None, None, "a message could not be deserialised")
    stamp, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id.lstrip("/")
    try:
        return _Info(stamp, frame_id, camera_info_to_K(msg), camera_info_size(msg), "")
    except InputError as err:
        return _Info(stamp, frame_id, None, None, str(err))


def _add_transforms(tree: TransformTree, samples: dict, msg: Any, *, static: bool) -> list[str]:
    """Add a TFMessage's transforms: static ones now, dynamic ones batched per edge.

    Returns:
        Why each invalid transform (unnamed frames, a bad quaternion) was ignored, as tf2
        ignores them.
    """
    ignored = []
    for stamped in msg.transforms:
        parent = stamped.header.frame_id.lstrip("/")  # tf2 frame ids have no leading slash
        child = stamped.child_frame_id.lstrip("/")
        try:
            if not parent or not child or parent == child:
                raise InputError("a transform needs two different, non-empty frame ids")
            T = transform_to_matrix(stamped.transform)
        except InputError as err:
            ignored.append(f"{parent!r} -> {child!r}: {err}")
            continue
        if static:
            tree.add_static(parent, child, T)
        else:
            stamps, matrices = samples.setdefault((parent, child), ([], []))
            stamps.append(stamp_to_ns(stamped.header.stamp))
            matrices.append(T)
    return ignored


def _default_camera_frame(infos: list[_Info], color: list[_Image], poses: bool) -> str:
    """The camera_info's frame_id, else the colour image's (the optical frame, REP 103)."""
    for frame_id in [i.frame_id for i in infos] + [c.frame_id for c in color]:
        if frame_id:
            return frame_id
    if poses:
        return "camera"  # with a TUM trajectory the name only labels the frames
    raise InputError(
        "neither the camera_info nor the colour images name a header.frame_id; "
        "pass camera_frame= (the colour camera's optical frame in the TF tree)"
    )
