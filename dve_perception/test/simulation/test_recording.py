"""Label-coloured synthetic recordings and the oracles that read them back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.simulation import (
    LabelColorEmbedder,
    LabelTextEncoder,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
    render_frames,
)


@pytest.fixture(scope="module")
def scene():
    return make_room_scene(seed=0, embedding_dim=64)


def test_colours_decode_back_to_the_rendered_labels(scene):
    K = pinhole_intrinsics(80, 60)
    poses = orbit_trajectory(scene, 2, seed=0)
    frames = render_frames(scene, K, poses, 60, 80, start_stamp_ns=10, period_ns=5)
    assert [f.stamp_ns for f in frames] == [10, 15]
    for frame, pose in zip(frames, poses, strict=True):
        view = render(scene, K, pose, 60, 80)
        np.testing.assert_array_equal(LabelColorEmbedder(scene).labels(frame.rgb), view.labels)
        np.testing.assert_array_equal(frame.depth_m, view.depth_m)


def test_embedder_emits_prototypes_at_the_output_stride(scene):
    K = pinhole_intrinsics(80, 60)
    frame = render_frames(scene, K, orbit_trajectory(scene, 1, seed=0), 60, 80)[0]
    out = LabelColorEmbedder(scene, output_stride=4).embed(frame)
    assert out.embedding.shape == (64, 15, 20) and out.depth_m.shape == (15, 20)
    labels = LabelColorEmbedder(scene).labels(frame.rgb)[2::4, 2::4]
    expected = torch.from_numpy(np.array(scene.prototypes))[torch.from_numpy(labels).clamp(min=0)]
    expected[torch.from_numpy(labels) < 0] = 0
    torch.testing.assert_close(out.embedding, expected.permute(2, 0, 1))
    with pytest.raises(InputError, match="output_stride"):
        LabelColorEmbedder(scene, output_stride=0)


def test_text_encoder_maps_names_to_prototypes_and_other_phrases_to_generic_vectors(scene):
    encoder = LabelTextEncoder(scene)
    vectors = encoder.encode(["cabinet", "object", "object"])
    torch.testing.assert_close(vectors[0], torch.tensor(scene.prototypes[3]))
    torch.testing.assert_close(vectors[1], vectors[2])  # deterministic per phrase
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))
    # Generic phrases resemble every label a little, as CLIP's "object" does.
    similarity = torch.tensor(scene.prototypes) @ vectors[1]
    assert (similarity > 0).all() and similarity.mean() > 0.15
    assert encoder.encode([]).shape == (0, 64)
