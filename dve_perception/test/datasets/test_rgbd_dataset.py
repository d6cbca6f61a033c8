"""Tests of the dataset layout loader and the synthetic dataset writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.datasets.rgbd_dataset import RGBDDataset, collate, read_class_names
from dve_perception.datasets.synthetic_dataset import write_synthetic_dataset
from dve_perception.errors import ConfigError, InputError
from dve_perception.images import write_png


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "ds", samples=3, size=(32, 48), seed=1)


def test_synthetic_dataset_loads_with_the_documented_types_and_shapes(root: Path) -> None:
    dataset = RGBDDataset(root, "train", check_labels=True)
    sample = dataset[0]
    assert len(dataset) == 3 and dataset.class_names == ["wall", "floor", "chair"]
    assert sample.rgb.shape == (3, 32, 48) and sample.rgb.dtype == torch.uint8
    assert sample.depth_mm.shape == (1, 32, 48) and sample.depth_mm.dtype == torch.float32
    assert sample.semantic.shape == (32, 48) and sample.semantic.dtype == torch.int64
    assert sample.instance is not None and sample.instance.dtype == torch.int64
    assert sample.id == "000000"


def test_synthetic_dataset_marks_void_with_zero_depth_and_uses_every_class(root: Path) -> None:
    sample = RGBDDataset(root, "val")[0]
    void = sample.semantic == 0
    assert void.any() and (sample.depth_mm[0][void] == 0).all()
    assert (sample.depth_mm[0][~void] > 0).all()
    assert set(sample.semantic.unique().tolist()) == {0, 1, 2, 3}


def test_loader_returns_the_pixels_written(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", samples=1, size=(16, 16))
    rgb = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    depth = np.full((16, 16), 1234, dtype=np.uint16)
    semantic = np.zeros((16, 16), dtype=np.uint16)
    semantic[3, 4] = 3
    write_png(root / "rgb" / "000000.png", rgb)
    write_png(root / "depth" / "000000.png", depth)
    write_png(root / "semantic" / "000000.png", semantic)
    sample = RGBDDataset(root, "train")[0]
    assert torch.equal(sample.rgb, torch.from_numpy(rgb).permute(2, 0, 1))
    assert (sample.depth_mm == 1234.0).all()
    assert sample.semantic[3, 4] == 3 and sample.semantic.sum() == 3


def test_instance_folder_is_optional(root: Path) -> None:
    for path in (root / "instance").iterdir():
        path.unlink()
    (root / "instance").rmdir()
    assert RGBDDataset(root, "train")[0].instance is None


def test_missing_files_are_listed_with_a_count(root: Path) -> None:
    (root / "depth" / "000001.png").unlink()
    (root / "semantic" / "000002.png").unlink()
    with pytest.raises(InputError, match=r"misses 2 file\(s\): depth/000001.png, semantic/000002"):
        RGBDDataset(root, "train")


def test_many_missing_files_are_abbreviated(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", samples=7, size=(16, 16))
    for path in (root / "rgb").iterdir():
        path.unlink()
    with pytest.raises(InputError, match=r"misses 7 file\(s\).*and 2 more"):
        RGBDDataset(root, "train")


def test_missing_folder_and_split_are_reported(root: Path) -> None:
    with pytest.raises(InputError, match=r"split file .*test.txt does not exist.*'train', 'val'"):
        RGBDDataset(root, "test")
    (root / "classes.txt").unlink()
    with pytest.raises(InputError, match="class list .* does not exist"):
        RGBDDataset(root, "train")


def test_a_missing_required_folder_is_named(root: Path) -> None:
    for path in (root / "depth").iterdir():
        path.unlink()
    (root / "depth").rmdir()
    with pytest.raises(InputError, match=r"lacks the folder\(s\) \['depth'\]"):
        RGBDDataset(root, "train")


def test_images_of_different_sizes_are_rejected(root: Path) -> None:
    write_png(root / "depth" / "000001.png", np.ones((20, 48), dtype=np.uint16))
    with pytest.raises(InputError, match="sample '000001'.*different sizes.*depth 48x20"):
        RGBDDataset(root, "train")


def test_labels_outside_the_class_list_fail_lazily_naming_file_label_and_count(root: Path) -> None:
    semantic = np.zeros((32, 48), dtype=np.uint8)
    semantic[0, 0] = 7
    write_png(root / "semantic" / "000001.png", semantic)
    dataset = RGBDDataset(root, "train")  # lazy: construction succeeds
    dataset[0]
    with pytest.raises(InputError, match=r"000001.png has label\(s\) 7 outside.*3 classes"):
        dataset[1]
    with pytest.raises(InputError, match=r"label\(s\) 7 outside"):
        RGBDDataset(root, "train", check_labels=True)


def test_colour_label_images_are_rejected(root: Path) -> None:
    write_png(root / "semantic" / "000000.png", np.zeros((32, 48, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="single-channel 8- or 16-bit"):
        RGBDDataset(root, "train")[0]


def test_class_list_with_blank_or_duplicate_lines_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("wall\n\nfloor\n")
    with pytest.raises(InputError, match="blank line 2"):
        read_class_names(path)
    path.write_text("wall\nwall\n")
    with pytest.raises(InputError, match=r"repeats \['wall'\]"):
        read_class_names(path)


def test_collate_stacks_samples_and_rejects_mixed_sizes(root: Path) -> None:
    dataset = RGBDDataset(root, "train")
    batch = collate([dataset[0], dataset[1]])
    assert batch.rgb.shape == (2, 3, 32, 48) and batch.semantic.shape == (2, 32, 48)
    assert batch.instance is not None and batch.id == ["000000", "000001"]
    small = dataset[0].replace(semantic=torch.zeros(8, 8, dtype=torch.int64))
    with pytest.raises(InputError, match="different sizes"):
        collate([dataset[0], small])
    with pytest.raises(InputError, match="empty list"):
        collate([])


def test_synthetic_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="samples must be a positive integer"):
        write_synthetic_dataset(tmp_path, samples=0)
    with pytest.raises(ConfigError, match="size must be"):
        write_synthetic_dataset(tmp_path, size=(8, 8))
    with pytest.raises(ConfigError, match="unique"):
        write_synthetic_dataset(tmp_path, classes=("a", "a"))


def test_synthetic_dataset_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", samples=1, seed=5)
    b = write_synthetic_dataset(tmp_path / "b", samples=1, seed=5)
    c = write_synthetic_dataset(tmp_path / "c", samples=1, seed=6)
    read = [RGBDDataset(r, "train")[0] for r in (a, b, c)]
    assert torch.equal(read[0].rgb, read[1].rgb) and not torch.equal(read[0].rgb, read[2].rgb)
