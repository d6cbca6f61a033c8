"""Synthetic RGB-D scenes with exact ground truth for tests and benchmarks of the voxel map.

A box-world room (`make_room_scene`) is ray cast exactly (`render`) from camera poses
(`look_at`, `orbit_trajectory`); `make_embeddings` turns a frame into 768-d unit embeddings
(label prototype + smooth spatial variation + noise), and `surface_voxels` /
`voxel_label_majority` give the voxel ground truth from the exact hit points. `render_frames`,
`LabelColorEmbedder` and `LabelTextEncoder` make label-coloured recordings and read them back as
prototype embeddings, for end-to-end replay tests without the network. The arithmetic is
numpy; pose and intrinsics checks are the core ones (`dve_perception.camera`).
"""

from __future__ import annotations

from dve_perception.simulation.camera import look_at, orbit_trajectory, pinhole_intrinsics
from dve_perception.simulation.feature_field import SmoothFeatureField, make_embeddings
from dve_perception.simulation.ground_truth import surface_voxels, voxel_label_majority
from dve_perception.simulation.recording import (
    LabelColorEmbedder,
    LabelTextEncoder,
    render_frames,
)
from dve_perception.simulation.synthetic_scene import (
    Box,
    RenderedFrame,
    SyntheticScene,
    make_room_scene,
    render,
)

__all__ = [
    "Box",
    "LabelColorEmbedder",
    "LabelTextEncoder",
    "RenderedFrame",
    "SmoothFeatureField",
    "SyntheticScene",
    "look_at",
    "make_embeddings",
    "make_room_scene",
    "orbit_trajectory",
    "pinhole_intrinsics",
    "render",
    "render_frames",
    "surface_voxels",
    "voxel_label_majority",
]
