"""Teacher targets: the formula, the compact file, dense expansion and visual-mean prototypes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dve_perception.errors import InputError
from dve_perception.training.alpha_clip import (
    TINY_ALPHA_CLIP_CONFIG,
    AlphaCLIPVisionTransformer,
    preprocess_alpha,
    preprocess_rgb,
)
from dve_perception.training.segments import panoptic_segments
from dve_perception.training.targets import (
    SegmentTargets,
    compute_sample_targets,
    compute_targets,
    dense,
    load_targets,
    save_targets,
    target_vectors,
    targets_dir,
    visual_mean_prototypes,
)

SIZE = TINY_ALPHA_CLIP_CONFIG.image_size


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = AlphaCLIPVisionTransformer(TINY_ALPHA_CLIP_CONFIG).eval()
    with torch.no_grad():
        model.conv1_alpha.weight.normal_(0.0, 0.3)  # so that masks change the embedding
    return model


def sample(sample_id: str = "s0") -> SimpleNamespace:
    gen = torch.Generator().manual_seed(5)
    rgb = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8, generator=gen)
    semantic = np.zeros((12, 16), dtype=np.int64)
    semantic[:6] = 1  # wall (stuff)
    semantic[6:, :8] = 2
    semantic[6:, 8:12] = 2
    instance = np.zeros_like(semantic)
    instance[6:, :8] = 1
    instance[6:, 8:12] = 2  # columns 12.. stay void
    return SimpleNamespace(id=sample_id, rgb=rgb, semantic=semantic, instance=instance)


def test_targets_follow_the_formula_computed_directly(teacher):
    s = sample()
    segments = panoptic_segments(s.semantic, s.instance, stuff_classes={1})
    targets = compute_sample_targets(s.rgb, segments, teacher, alpha=0.65)
    assert targets.class_ids.tolist() == [1, 2, 2]
    image = preprocess_rgb(s.rgb, SIZE)
    with torch.no_grad():
        img = teacher(image, preprocess_alpha(torch.ones(12, 16), SIZE))[0]
        img = img / img.norm()
        for k in range(1, 4):
            seg = teacher(
                image, preprocess_alpha(torch.from_numpy(segments.segment_ids == k), SIZE)
            )
            seg = seg[0] / seg[0].norm()
            diff = seg - 0.65 * img
            expected = diff / diff.norm()
            # float16 storage limits the agreement to ~1e-3.
            torch.testing.assert_close(target_vectors(targets)[k - 1], expected, atol=3e-3, rtol=0)


def test_segment_batching_does_not_change_the_embeddings(teacher):
    s = sample()
    segments = panoptic_segments(s.semantic, s.instance)
    one = compute_sample_targets(s.rgb, segments, teacher, batch_size=1)
    many = compute_sample_targets(s.rgb, segments, teacher, batch_size=8)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=2e-3)


def test_rgb_and_label_size_mismatch_is_refused(teacher):
    s = sample()
    segments = panoptic_segments(s.semantic[:, :8], s.instance[:, :8])
    with pytest.raises(InputError, match=r"rgb is \(12, 16\) but the label images are \(12, 8\)"):
        compute_sample_targets(s.rgb, segments, teacher)


def test_compute_targets_writes_one_compact_file_per_sample(teacher, tmp_path):
    out = targets_dir(tmp_path / "dataset", "tiny")
    assert out == tmp_path / "dataset" / "targets" / "tiny"
    paths = compute_targets(
        [sample("a"), sample("b")], teacher, out, teacher_name="tiny", stuff_classes={1}
    )
    assert [p.name for p in paths] == ["a.npz", "b.npz"]
    with np.load(paths[0], allow_pickle=False) as data:  # readable without pickle
        header = json.loads(str(data["header"]))
        assert data["vectors"].dtype == np.float16 and data["vectors"].shape == (3, 24)
        assert data["segment_ids"].dtype == np.int32
    assert header["teacher"] == "tiny" and header["alpha"] == 0.65 and header["size"] == [12, 16]


def test_unsafe_sample_id_is_refused(teacher, tmp_path):
    with pytest.raises(InputError, match="cannot be a file name"):
        compute_targets([sample("../x")], teacher, tmp_path)


def hand_targets(alpha: float = 0.65) -> SegmentTargets:
    segment_ids = np.zeros((8, 8), dtype=np.int32)
    segment_ids[:4, :4] = 1
    segment_ids[:4, 4:] = 2
    segment_ids[4:, :4] = 3  # bottom right stays void
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float16)
    return SegmentTargets(
        segment_ids=segment_ids,
        vectors=vectors,
        class_ids=np.array([1, 2, 2], dtype=np.int32),
        image_vector=np.array([0.6, 0.8, 0.0], dtype=np.float16),
        alpha=alpha,
        teacher="hand",
    )


def test_file_round_trip_keeps_everything(tmp_path):
    original = hand_targets(alpha=0.5)
    save_targets(tmp_path / "x.npz", original)
    loaded = load_targets(tmp_path / "x.npz")
    np.testing.assert_array_equal(loaded.segment_ids, original.segment_ids)
    np.testing.assert_array_equal(loaded.vectors, original.vectors)
    np.testing.assert_array_equal(loaded.class_ids, original.class_ids)
    np.testing.assert_array_equal(loaded.image_vector, original.image_vector)
    assert (loaded.alpha, loaded.teacher) == (0.5, "hand")


def test_foreign_or_missing_files_are_refused(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(InputError, match="not a readable segment-targets file"):
        load_targets(tmp_path / "other.npz")
    with pytest.raises(InputError, match="not a readable segment-targets file"):
        load_targets(tmp_path / "missing.npz")


def test_inconsistent_targets_are_refused():
    t = hand_targets()
    with pytest.raises(InputError, match="inconsistent segment targets"):
        SegmentTargets(t.segment_ids, t.vectors[:2], t.class_ids[:2], t.image_vector)


def test_dense_expands_targets_by_segment_and_zeroes_void():
    t = hand_targets(alpha=0.65)
    out = dense(t)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    # Segment 1: e_x − 0.65·(0.6, 0.8, 0) = (0.61, −0.52, 0), normalised by hand.
    expected = torch.tensor([0.61, -0.52, 0.0]) / (0.61**2 + 0.52**2) ** 0.5
    torch.testing.assert_close(out[:, 1, 2], expected, atol=1e-3, rtol=0)
    assert torch.count_nonzero(out[:, 4:, 4:]) == 0
    norms = out.norm(dim=0)
    torch.testing.assert_close(norms[:4], torch.ones(4, 8), atol=1e-5, rtol=0)


def test_dense_downscales_segment_ids_by_nearest_neighbour():
    t = hand_targets()
    small = dense(t, size=(2, 2))
    full = dense(t)
    # Nearest downscaling by 4 samples rows/columns 0 and 4: one pixel of each quadrant.
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        torch.testing.assert_close(small[:, i, j], full[:, 4 * i, 4 * j])
    assert torch.count_nonzero(small[:, 1, 1]) == 0
    with pytest.raises(InputError, match="expected \\(height, width\\)"):
        dense(t, size=(0, 2))


def write(tmp_path, name, class_ids, vectors, image_vector):
    n = len(class_ids)
    segment_ids = np.arange(1, n + 1, dtype=np.int32).reshape(1, n)
    t = SegmentTargets(
        segment_ids=segment_ids,
        vectors=np.array(vectors, dtype=np.float16),
        class_ids=np.array(class_ids, dtype=np.int32),
        image_vector=np.array(image_vector, dtype=np.float16),
    )
    save_targets(tmp_path / name, t)
    return tmp_path / name


def test_visual_mean_prototypes_match_a_hand_computation_on_two_images(tmp_path):
    # Image A: class 1 segment (1,0), class 2 segment (0,1); image embedding (0,1).
    # Image B: class 1 segment (0,1); image embedding (1,0). Class 3 never appears.
    a = write(tmp_path, "a.npz", [1, 2], [[1, 0], [0, 1]], [0, 1])
    b = write(tmp_path, "b.npz", [1], [[0, 1]], [1, 0])
    text = torch.tensor([[9.0, 9.0], [9.0, 9.0], [3.0, 4.0]])
    protos = visual_mean_prototypes([a, b], num_classes=3, text_fallback=text)
    # class 1: mean seg (0.5, 0.5), mean img (0.5, 0.5) → (0.175, 0.175) → (1/√2, 1/√2)
    h = 2**-0.5
    torch.testing.assert_close(protos[0], torch.tensor([h, h]), atol=1e-4, rtol=0)
    # class 2: (0, 1) − 0.65·(0, 1) = (0, 0.35) → (0, 1)
    torch.testing.assert_close(protos[1], torch.tensor([0.0, 1.0]), atol=1e-4, rtol=0)
    # class 3: text fallback, normalised
    torch.testing.assert_close(protos[2], torch.tensor([0.6, 0.8]))


def test_visual_mean_prototypes_weight_images_per_segment(tmp_path):
    # Two class-1 segments in image A (image (1,0)), one in image B (image (0,1)).
    a = write(tmp_path, "a.npz", [1, 1], [[1, 0], [1, 0]], [1, 0])
    b = write(tmp_path, "b.npz", [1], [[0, 1]], [0, 1])
    protos = visual_mean_prototypes([a, b], num_classes=1)
    mean_seg = torch.tensor([2 / 3, 1 / 3])
    expected = F.normalize(mean_seg - 0.65 * mean_seg, dim=0)  # image mean equals segment mean
    torch.testing.assert_close(protos[0], expected, atol=1e-4, rtol=0)


def test_visual_mean_prototypes_without_examples_or_files(tmp_path):
    a = write(tmp_path, "a.npz", [1], [[1, 0]], [0, 1])
    protos = visual_mean_prototypes([a], num_classes=2)
    assert torch.count_nonzero(protos[1]) == 0
    with pytest.raises(InputError, match="text_fallback has shape"):
        visual_mean_prototypes([a], num_classes=2, text_fallback=torch.ones(3, 2))
    with pytest.raises(InputError, match="no target files"):
        visual_mean_prototypes([], num_classes=2)
