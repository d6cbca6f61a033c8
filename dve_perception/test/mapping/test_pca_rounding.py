"""pca maps round fused coefficients to float16 stochastically, so small updates are not lost."""

from __future__ import annotations

import pytest
import torch

from dve_perception.mapping import MapConfig
from dve_perception.mapping.float16_rounding import round_stochastic_float16
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap

DIM, K = 16, 4
CAP = 50.0


def _noise(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1 << 13, (count,), generator=torch.Generator().manual_seed(seed))


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
    values = torch.tensor([0.70013, -0.70013, 0.0123457, -3.3e-3]).repeat(200_000, 1)
    rounded = round_stochastic_float16(values, _noise(values.numel())).double()
    ulp = values[0].double().abs() * 2.0**-10  # within a factor 2 of float16's spacing
    bias = (rounded.mean(0) - values[0].double()) / ulp
    assert bias.abs().max() < 0.01
    for column in range(4):  # only the two float16 values around the input occur
        below = values[0, column].half().float()
        assert torch.unique(rounded[:, column]).numel() == 2
        assert (rounded[:, column] - below.double()).abs().max() <= 2 * ulp[column]


def test_values_float16_holds_exactly_are_kept():
    exact = torch.tensor([0.5, -0.75, 0.0009765625, 0.0])
    out = round_stochastic_float16(exact.repeat(1000), _noise(4000))
    assert torch.equal(out.float(), exact.repeat(1000))


def _storage() -> VoxelEmbeddingMap:
    """A pca storage with an identity-like basis of the first K axes and one voxel."""
    config = MapConfig(embedding_dim=DIM, feature_encoding="pca", pca_dim=K, weight_cap=CAP)
    storage = VoxelEmbeddingMap(config)
    basis = torch.eye(DIM)[:, :K]
    start = torch.zeros(1, K, dtype=torch.float16)
    start[0, 0] = 0.5
    storage.load_state(
        torch.zeros(1, 3, dtype=torch.int64),
        start,
        torch.full((1,), CAP),
        torch.zeros(1, dtype=torch.int64),
        basis,
    )
    return storage


def test_a_capped_voxel_follows_small_updates_that_rounding_to_nearest_would_lose():
    # Observation x keeps pulling the first coefficient from 0.5 towards 0.7 by 1/51 of the
    # gap per frame. Rounded to nearest, the stored value stops moving once that step is below
    # half a float16 spacing (4.9e-4 near 0.6): stuck ~12 spacings short of 0.7.
    storage = _storage()
    x = torch.zeros(1, DIM)
    x[0, 0], x[0, 1] = 0.7, (1 - 0.49) ** 0.5  # unit vector
    key = storage.keys.clone()
    nearest = torch.tensor(0.5, dtype=torch.float16)
    for _ in range(600):
        storage.fuse(key, x, torch.ones(1), torch.zeros(3))
        nearest = (nearest.float() + (0.7 - nearest.float()) / (CAP + 1)).half()
    stored = storage.features[0, 0].float().item()
    spacing = 2.0**-11
    assert abs(nearest.item() - 0.7) > 8 * spacing  # the stall this guards against
    assert abs(stored - 0.7) < 3 * spacing


@pytest.mark.parametrize("seed", [0, 1])
def test_a_map_built_twice_from_the_same_frames_is_identical(seed):
    frames = torch.randn(5, 40, DIM, generator=torch.Generator().manual_seed(seed))
    keys = torch.arange(40, dtype=torch.int64)
    built = []
    for _ in range(2):
        storage = _storage()
        storage.clear()
        storage.load_state(
            torch.zeros(0, 3, dtype=torch.int64),
            torch.zeros(0, K),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.int64),
            torch.eye(DIM)[:, :K],
        )
        for frame in frames:
            storage.fuse(
                keys, frame / frame.norm(dim=1, keepdim=True), torch.ones(40), torch.zeros(3)
            )
        built.append(storage.features.clone())
    assert torch.equal(built[0], built[1])


@pytest.mark.gpu
def test_stochastic_rounding_runs_on_cuda_and_is_unbiased():
    from dve_perception.mapping.float16_rounding import StochasticFloat16

    rounding = StochasticFloat16(torch.device("cuda"))
    values = torch.full((4000, 128), 0.70013, device="cuda")
    means = torch.stack([rounding(values).double().mean() for _ in range(20)])
    assert abs(means.mean().item() - 0.70013) < 0.01 * 0.70013 * 2.0**-10
