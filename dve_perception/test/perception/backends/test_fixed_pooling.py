"""Fixed pooling must compute exactly what adaptive pooling computes, and swap back cleanly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dve_perception.errors import InputError
from dve_perception.perception.backends.fixed_pooling import FixedAvgPool2d, fixed_pooling


@pytest.mark.parametrize(
    ("input_size", "output_size", "uses_avg_pool"),
    [
        ((15, 20), (5, 5), True),  # 480x640: the official AvgPool2d(k=(3,4), s=(3,4))
        ((15, 20), (1, 1), True),  # the global bin
        ((6, 7), (5, 5), False),  # 192x224: overlapping bins of unequal size
        ((2, 3), (5, 5), False),  # fewer pixels than bins: bins repeat pixels
        ((1, 1), (5, 5), False),
        ((9, 10), (5, 1), False),
    ],
)
def test_fixed_pool_equals_adaptive_pool(input_size, output_size, uses_avg_pool):
    x = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    fixed = FixedAvgPool2d(input_size, output_size)

    assert (fixed.pool is not None) == uses_avg_pool
    torch.testing.assert_close(fixed(x), nn.AdaptiveAvgPool2d(output_size)(x), rtol=0, atol=1e-6)


def test_fixed_pool_rejects_another_input_size():
    with pytest.raises(InputError, match=r"built for \(6, 7\) inputs, got \(6, 8\)"):
        FixedAvgPool2d((6, 7), (5, 5))(torch.zeros(1, 1, 6, 8))


def test_fixed_pooling_swaps_in_for_the_export_size_and_restores(tiny_model):
    originals = [m for m in tiny_model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    keys = list(tiny_model.state_dict())
    rgb, depth = torch.randn(1, 3, 192, 224), torch.randn(1, 1, 192, 224)
    with torch.no_grad():
        expected = tiny_model(rgb, depth)

        with fixed_pooling(tiny_model, 192, 224):
            fixed = [m for m in tiny_model.modules() if isinstance(m, FixedAvgPool2d)]
            assert [m.input_size for m in fixed] == [(6, 7), (6, 7)]
            assert [m.output_size for m in fixed] == [(1, 1), (5, 5)]
            assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in tiny_model.modules())
            assert list(tiny_model.state_dict()) == keys
            torch.testing.assert_close(tiny_model(rgb, depth), expected, rtol=0, atol=1e-5)

    assert [m for m in tiny_model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == originals
    assert not any(isinstance(m, FixedAvgPool2d) for m in tiny_model.modules())


def test_fixed_pooling_restores_the_model_after_an_error(tiny_model):
    originals = [m for m in tiny_model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    with pytest.raises(RuntimeError, match="boom"), fixed_pooling(tiny_model.eval(), 64, 64):
        raise RuntimeError("boom")
    assert [m for m in tiny_model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == originals
