"""Panoptic segments from hand-made semantic and instance images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.training.segments import panoptic_segments

# Classes: 0 void, 1 wall (stuff), 3 chair (thing). Two chairs; the wall carries a stray
# instance id that a stuff class must ignore.
SEMANTIC = np.array(
    [
        [1, 1, 3, 3],
        [1, 1, 3, 3],
        [0, 3, 3, 1],
    ]
)
INSTANCE = np.array(
    [
        [0, 5, 1, 1],
        [0, 0, 2, 2],
        [0, 2, 2, 0],
    ]
)


def test_thing_instances_are_separate_segments_and_stuff_is_one_per_class():
    seg = panoptic_segments(SEMANTIC, INSTANCE, stuff_classes={1})
    # Ordered by (class, instance): wall, chair 1, chair 2.
    assert seg.class_ids.tolist() == [1, 3, 3]
    expected = np.array(
        [
            [1, 1, 2, 2],
            [1, 1, 3, 3],
            [0, 3, 3, 1],
        ]
    )
    np.testing.assert_array_equal(seg.segment_ids, expected)
    assert seg.segment_ids.dtype == np.int32


def test_without_stuff_list_instance_ids_split_even_walls():
    seg = panoptic_segments(SEMANTIC, INSTANCE)
    # wall without id, wall id 5, chair 1, chair 2
    assert seg.class_ids.tolist() == [1, 1, 3, 3]
    assert seg.segment_ids[0, 1] == 2 and seg.segment_ids[0, 0] == 1


def test_same_instance_id_in_two_classes_gives_two_segments():
    semantic = np.array([[2, 2, 4, 4]])
    instance = np.array([[7, 7, 7, 7]])
    seg = panoptic_segments(semantic, instance)
    assert seg.class_ids.tolist() == [2, 4]
    assert seg.segment_ids.tolist() == [[1, 1, 2, 2]]


def test_no_instance_image_makes_one_segment_per_class_and_accepts_tensors():
    seg = panoptic_segments(torch.from_numpy(SEMANTIC), None)
    assert seg.class_ids.tolist() == [1, 3]
    assert (seg.segment_ids == 0).sum() == 1


def test_all_void_image_has_no_segments():
    seg = panoptic_segments(np.zeros((2, 2), dtype=np.int64))
    assert seg.class_ids.shape == (0,)
    assert not seg.segment_ids.any()


def test_custom_void_class_is_excluded():
    seg = panoptic_segments(np.array([[255, 1]]), void_class=255)
    assert seg.segment_ids.tolist() == [[0, 1]]


def test_bad_label_images_are_refused():
    with pytest.raises(InputError, match="same size"):
        panoptic_segments(SEMANTIC, INSTANCE[:, :3])
    with pytest.raises(InputError, match="2-D integer label image"):
        panoptic_segments(SEMANTIC.astype(np.float32))
    with pytest.raises(InputError, match="negative label -1"):
        panoptic_segments(SEMANTIC, -np.ones_like(INSTANCE))
