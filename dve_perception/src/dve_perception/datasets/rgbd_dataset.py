"""The RGB-D segmentation dataset layout (docs/datasets.md) and its loader.

A dataset root holds `classes.txt` (label i >= 1 is line i; 0 is void and not listed),
`splits/<split>.txt` (one sample id per line) and per id `rgb/<id>.png` (8-bit RGB),
`depth/<id>.png` (16-bit mm, 0 invalid), `semantic/<id>.png` (8- or 16-bit class ids, 0 void)
and optionally `instance/<id>.png` (16-bit instance ids, 0 none). Construction checks that
every file exists and that each sample's images have one size (reading PNG headers only);
labels are checked when a sample is loaded, or for all samples up front with `check_labels`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dve_perception.errors import InputError
from dve_perception.images import read_depth, read_rgb

__all__ = [
    "LABEL_FOLDERS",
    "OPTIONAL_FOLDER",
    "REQUIRED_FOLDERS",
    "RGBDDataset",
    "Sample",
    "collate",
    "read_class_names",
    "read_labels",
]

#: Folders every sample needs, and the optional one.
REQUIRED_FOLDERS = ("rgb", "depth", "semantic")
OPTIONAL_FOLDER = "instance"
LABEL_FOLDERS = ("semantic", "instance")
#: How many missing files an error message lists before giving only the count.
_LIST_AT_MOST = 5
_LABEL_MODES = ("L", "I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True, eq=False)
class Sample:
    """One sample as tensors.

    Attributes:
        rgb: (3, H, W) uint8 colour in RGB order.
        depth_mm: (1, H, W) float32 depth in millimetres, 0 = invalid.
        semantic: (H, W) int64 class ids, 0 = void, 1..K = line of classes.txt.
        instance: (H, W) int64 instance ids (0 = none), or None without instance images.
        id: the sample id from the split file.
    """

    rgb: torch.Tensor
    depth_mm: torch.Tensor
    semantic: torch.Tensor
    instance: torch.Tensor | None
    id: str

    def replace(self, **changes: object) -> Sample:
        """Return a copy with some fields replaced (for transforms)."""
        return replace(self, **changes)


def read_class_names(path: str | Path) -> list[str]:
    """Read `classes.txt`: one class name per line, void (label 0) not listed.

    Raises:
        InputError: the file is missing, empty, has a blank line inside or a duplicated name.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"class list {path} does not exist; expected one class name per line")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise InputError(f"class list {path} is empty; expected one class name per line")
    if "" in names:
        raise InputError(
            f"class list {path} has a blank line {names.index('') + 1}; label i is line i, so "
            "blank lines would shift every label"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"class list {path} repeats {duplicates}; class names must be unique")
    return names


def read_labels(path: str | Path, role: str = "semantic") -> np.ndarray:
    """Read an 8- or 16-bit single-channel label PNG as (H, W) int64.

    Raises:
        InputError: the file is missing, unreadable or not single-channel 8/16-bit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{role} image {path} does not exist or is not a file")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.array(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read {role} image {path}: {err}") from err
    if mode not in _LABEL_MODES or values.ndim != 2:
        raise InputError(
            f"{role} image {path} has Pillow mode {mode!r}; expected a single-channel 8- or "
            "16-bit PNG of integer ids (a colour-coded label image cannot be read as ids)"
        )
    return values.astype(np.int64)


class RGBDDataset(torch.utils.data.Dataset):
    """RGB-D samples with semantic (and instance) labels in the documented layout.

    Args:
        root: the dataset folder.
        split: name of a file in `<root>/splits/` without `.txt`, e.g. "train".
        transform: applied to each `Sample` (e.g. `augmentation.TrainAugmentation`).
        check_labels: read every semantic image now and fail on labels outside the class list
            (otherwise this is checked per sample when it is loaded).

    Raises:
        InputError: missing class list, split, folders or files (the first few are listed with
            a count), a sample whose images differ in size, or (with `check_labels`) a label
            outside 0..K.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transform: Callable[[Sample], Sample] | None = None,
        check_labels: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"dataset root {self.root} does not exist or is not a folder")
        self.class_names = read_class_names(self.root / "classes.txt")
        self.split = split
        self.ids = self._read_split(split)
        self.transform = transform
        self.has_instance = (self.root / OPTIONAL_FOLDER).is_dir()
        self._check_files()
        self._check_sizes()
        if check_labels:
            for index in range(len(self.ids)):
                self._read_semantic(self.ids[index])

    @property
    def num_classes(self) -> int:
        """K, the number of classes without void."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        sample_id = self.ids[index]
        rgb = read_rgb(self._path("rgb", sample_id))
        depth = read_depth(self._path("depth", sample_id))
        semantic = self._read_semantic(sample_id)
        instance = None
        if self.has_instance:
            instance = torch.from_numpy(
                read_labels(self._path(OPTIONAL_FOLDER, sample_id), "instance")
            )
        sample = Sample(
            rgb=torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            depth_mm=torch.from_numpy(depth.astype(np.float32))[None],
            semantic=torch.from_numpy(semantic),
            instance=instance,
            id=sample_id,
        )
        return self.transform(sample) if self.transform is not None else sample

    def _path(self, folder: str, sample_id: str) -> Path:
        return self.root / folder / f"{sample_id}.png"

    def _read_split(self, split: str) -> list[str]:
        path = self.root / "splits" / f"{split}.txt"
        if not path.is_file():
            available = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
            raise InputError(f"split file {path} does not exist; available splits: {available}")
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        ids = [i for i in ids if i]
        if not ids:
            raise InputError(f"split file {path} lists no sample ids")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise InputError(f"split file {path} lists {_first_few(repeated)} more than once")
        return ids

    def _check_files(self) -> None:
        folders = [*REQUIRED_FOLDERS, *([OPTIONAL_FOLDER] if self.has_instance else [])]
        missing_folders = [f for f in REQUIRED_FOLDERS if not (self.root / f).is_dir()]
        if missing_folders:
            raise InputError(
                f"dataset {self.root} lacks the folder(s) {missing_folders}; expected "
                f"{list(REQUIRED_FOLDERS)} (and optionally '{OPTIONAL_FOLDER}')"
            )
        missing = [
            f"{folder}/{i}.png"
            for i in self.ids
            for folder in folders
            if not self._path(folder, i).is_file()
        ]
        if missing:
            raise InputError(
                f"dataset {self.root} split '{self.split}' misses {len(missing)} file(s): "
                f"{_first_few(missing)}"
            )

    def _check_sizes(self) -> None:
        folders = [*REQUIRED_FOLDERS, *([OPTIONAL_FOLDER] if self.has_instance else [])]
        for sample_id in self.ids:
            sizes = {folder: _image_size(self._path(folder, sample_id)) for folder in folders}
            if len(set(sizes.values())) > 1:
                described = ", ".join(f"{f} {w}x{h}" for f, (w, h) in sizes.items())
                raise InputError(
                    f"sample '{sample_id}' in {self.root} has images of different sizes "
                    f"(width x height: {described}); every image of a sample must be registered "
                    "to the colour image at its size"
                )

    def _read_semantic(self, sample_id: str) -> np.ndarray:
        path = self._path("semantic", sample_id)
        labels = read_labels(path, "semantic")
        if labels.size and (labels.min() < 0 or labels.max() > self.num_classes):
            bad = np.unique(labels[(labels < 0) | (labels > self.num_classes)])
            raise InputError(
                f"semantic image {path} has label(s) {_first_few(bad.tolist())} outside the "
                f"class list: {self.num_classes} classes in classes.txt allow 0 (void) to "
                f"{self.num_classes}"
            )
        return labels


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack samples of one size into a batch (a `Sample` with a leading batch dimension).

    `instance` is None unless every sample has one; `id` becomes the list of ids.

    Raises:
        InputError: no samples, or samples of different sizes (crop or resize them first).
    """
    if not samples:
        raise InputError("cannot collate an empty list of samples")
    sizes = {tuple(s.semantic.shape[-2:]) for s in samples}
    if len(sizes) > 1:
        raise InputError(
            f"cannot batch samples of different sizes {sorted(sizes)}; use a transform that "
            "crops them to one size (e.g. TrainAugmentation) or batch size 1"
        )
    instances = [s.instance for s in samples]
    return Sample(
        rgb=torch.stack([s.rgb for s in samples]),
        depth_mm=torch.stack([s.depth_mm for s in samples]),
        semantic=torch.stack([s.semantic for s in samples]),
        instance=None if any(i is None for i in instances) else torch.stack(instances),
        id=[s.id for s in samples],  # type: ignore[arg-type]
    )


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def _first_few(items: Sequence[object]) -> str:
    shown = ", ".join(str(i) for i in items[:_LIST_AT_MOST])
    more = len(items) - _LIST_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")
