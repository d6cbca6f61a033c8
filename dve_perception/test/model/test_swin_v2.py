"""SwinV2 details that the 480x640 parity fixture does not reach."""

from __future__ import annotations

import pytest
import torch

from dve_perception.model.swin_v2 import PatchMergingV2, _shift_mask


def reference_shift_mask(pad_h: int, pad_w: int, window: int, shift_h: int, shift_w: int):
    """Region labels written out per axis: an axis with shift 0 is one region (torchvision)."""

    def axis_labels(n: int, shift: int) -> torch.Tensor:
        idx = torch.arange(n)
        if shift == 0:
            return torch.zeros(n, dtype=torch.long)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    labels = axis_labels(pad_h, shift_h)[:, None] * 3 + axis_labels(pad_w, shift_w)[None, :]
    windows = labels.view(pad_h // window, window, pad_w // window, window)
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window * window)
    same = windows[:, :, None] == windows[:, None, :]
    return torch.where(same, 0.0, -100.0)


@pytest.mark.parametrize(
    "pad_h,pad_w,shift_h,shift_w", [(16, 24, 4, 4), (8, 16, 0, 4), (16, 8, 4, 0), (32, 40, 4, 4)]
)
def test_shift_mask_matches_region_definition(pad_h, pad_w, shift_h, shift_w):
    mask = _shift_mask(pad_h, pad_w, 8, shift_h, shift_w, torch.zeros(1))
    torch.testing.assert_close(mask, reference_shift_mask(pad_h, pad_w, 8, shift_h, shift_w))


def test_patch_merging_gathers_in_torchvision_order():
    merge = PatchMergingV2(1)
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(2, 4))  # keep the first two gathered channels
    merge.norm = torch.nn.Identity()
    x = torch.arange(4.0).view(1, 2, 2, 1)  # [[0, 1], [2, 3]] as (row, col)
    out = merge(x)
    # (0,0) first, then (1,0): row 1, column 0 holds 2.
    assert out.flatten().tolist() == [0.0, 2.0]
