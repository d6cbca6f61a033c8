"""The student's training samples: augmented RGB-D inputs plus the teacher's segment targets.

Each item joins a dataset sample with its stored targets (`targets/<teacher>/<id>.npz`). The
targets' segment-id image goes through the augmentation in the sample's `instance` slot, which
the geometric steps move exactly like the labels (nearest, void/0 padding), so targets stay
registered to the crop; the vectors never need resampling. Inputs are preprocessed with
`preprocess.prepare_inputs`, the inference function, so training and inference see the same
normalisation. Augmentation randomness comes from a generator seeded by (seed, epoch, index):
results do not depend on worker count or on resuming.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dve_perception.datasets.rgbd_dataset import RGBDDataset
from dve_perception.errors import InputError
from dve_perception.perception.preprocess import PreprocessConfig, prepare_inputs
from dve_perception.training.augmentation import (
    AugmentationConfig,
    TrainAugmentation,
    depth_randomisation,
)
from dve_perception.training.losses import downscale_target
from dve_perception.training.targets import load_targets, target_vectors

__all__ = ["DistillationDataset", "collate_items", "dense_targets"]


class DistillationDataset(torch.utils.data.Dataset):
    """Training items: network inputs, the augmented crop and labels, and segment targets.

    Keys: rgb, depth, depth_m, rgb_u8, semantic, segment_ids, table, extra_tables, id.
    `rgb` (3, H, W) and `depth` (1, H, W) are the network inputs as at inference; `depth_m` is
    metric depth (for the PDE stem); `rgb_u8` the augmented uint8 crop (for a live teacher);
    `semantic` (H, W) the augmented class ids (0 void); `segment_ids` (H, W) int64 index rows of
    `table` ((S + 1, D) float32, row 0 the zero vector of void); `extra_tables` one such table
    per extra target store. Segment ids come from the ground-truth segments, so every store of a
    sample must hold the same segment-id image (checked).

    Args:
        dataset: the samples, without a transform.
        targets_folder: where `<id>.npz` files are.
        crop_size: (height, width) network input size.
        augment: apply the official augmentation (otherwise samples must already be crop_size).
        depth_random: apply `depth_randomisation` to valid depth.
        seed: base seed of the per-item generators.
        extra_folders: target stores of further teachers (several-teacher distillation).

    Raises:
        InputError: a missing target store, or a sample without a targets file (the message
            names `compute-targets`).
    """

    def __init__(
        self,
        dataset: RGBDDataset,
        targets_folder: str | Path,
        crop_size: tuple[int, int],
        *,
        augment: bool = True,
        depth_random: bool = False,
        seed: int = 0,
        extra_folders: Sequence[str | Path] = (),
    ) -> None:
        self.dataset = dataset
        self.folder = Path(targets_folder)
        self.extra_folders = [Path(f) for f in extra_folders]
        self.crop_size = tuple(crop_size)
        self.augment = augment
        self.depth_random = depth_random
        self.seed = seed
        self.epoch = 0
        for folder in self.extra_folders:
            if not folder.is_dir():
                raise InputError(
                    f"no target store for teacher '{folder.name}': {folder} does not exist; "
                    f"compute it with `dve-perception compute-targets {dataset.root} --teacher "
                    f"CKPT --teacher-name {folder.name} --split {dataset.split}`"
                )
        for folder in [self.folder, *self.extra_folders]:
            _check_complete(dataset, folder)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, object]:
        sample = self.dataset[index]
        targets = load_targets(self.folder / f"{sample.id}.npz")
        if targets.segment_ids.shape != tuple(sample.semantic.shape):
            raise InputError(
                f"targets of sample '{sample.id}' are {targets.segment_ids.shape} but its images "
                f"are {tuple(sample.semantic.shape)}; recompute them with compute-targets"
            )
        ids = torch.from_numpy(targets.segment_ids.astype(np.int64))
        extra = [self._extra_vectors(folder, sample.id, targets) for folder in self.extra_folders]
        sample = sample.replace(instance=ids)  # segment ids ride along in the instance slot
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        )
        if self.augment:
            config = AugmentationConfig(crop_size=self.crop_size)
            sample = TrainAugmentation(config, generator=generator)(sample)
        elif tuple(sample.semantic.shape) != self.crop_size:
            raise InputError(
                f"sample '{sample.id}' is {tuple(sample.semantic.shape)}, expected "
                f"{self.crop_size} without augmentation (which crops)"
            )
        depth_mm = sample.depth_mm
        if self.depth_random:
            depth_mm = depth_randomisation(depth_mm, generator)
        height, width = self.crop_size
        net = prepare_inputs(
            sample.rgb.permute(1, 2, 0).contiguous(),
            (depth_mm[0] / 1000.0).float(),
            depth_encoding="32FC1",
            config=PreprocessConfig(height=height, width=width),
        )
        return {
            "rgb": net.rgb[0],
            "depth": net.depth[0],
            "depth_m": net.depth_m[0],
            "rgb_u8": sample.rgb,
            "semantic": sample.semantic,
            "segment_ids": sample.instance,
            "table": _table(target_vectors(targets)),
            "extra_tables": [_table(vectors) for vectors in extra],
            "id": sample.id,
        }

    def _extra_vectors(self, folder: Path, sample_id: str, main: object) -> torch.Tensor:
        targets = load_targets(folder / f"{sample_id}.npz")
        if not np.array_equal(targets.segment_ids, main.segment_ids):  # type: ignore[attr-defined]
            raise InputError(
                f"targets of sample '{sample_id}' in {folder} have other segments than those in "
                f"{self.folder}; compute every teacher's targets from the same labels"
            )
        return target_vectors(targets)


def _table(vectors: torch.Tensor) -> torch.Tensor:
    """Segment vectors with the void row 0 (the zero vector) in front."""
    return torch.cat([torch.zeros(1, vectors.shape[1]), vectors])


def _check_complete(dataset: RGBDDataset, folder: Path) -> None:
    missing = [i for i in dataset.ids if not (folder / f"{i}.npz").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InputError(
            f"no teacher targets for {len(missing)} sample(s) of split '{dataset.split}' in "
            f"{folder} ({shown}); compute them first with `dve-perception "
            f"compute-targets {dataset.root} --teacher CKPT --split {dataset.split}`"
        )


def collate_items(items: Sequence[dict[str, object]]) -> dict[str, object]:
    """Stack tensors of equal shape; keep the per-sample target tables as a list."""
    out: dict[str, object] = {
        key: torch.stack([item[key] for item in items])  # type: ignore[misc]
        for key in ("rgb", "depth", "depth_m", "rgb_u8", "semantic", "segment_ids")
    }
    out["table"] = [item["table"] for item in items]
    out["extra_tables"] = [item["extra_tables"] for item in items]
    out["id"] = [item["id"] for item in items]
    return out


def dense_targets(
    segment_ids: torch.Tensor, tables: Sequence[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """(B, D, h, w) targets at the model's output size; void pixels get zero vectors.

    Segment ids are downscaled first with `losses.downscale_target` (nearest at pixel centres),
    which equals downscaling the dense target but never builds it at full resolution.
    """
    ids = (
        downscale_target(segment_ids, size)
        if tuple(segment_ids.shape[-2:]) != size
        else segment_ids
    )
    maps = [table.to(ids.device)[i].permute(2, 0, 1) for table, i in zip(tables, ids, strict=True)]
    return torch.stack(maps)
