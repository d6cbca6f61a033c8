"""pca_int maps: fixed-point and int8 coefficients, exact integer scores, long fusion, files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import dve_perception.mapping.fixed_point_codes as fixed_point
from dve_perception.errors import ConfigError, InputError, MapFileError
from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.mapping.fixed_point_codes import FixedPointCodes, row_bytes
from dve_perception.mapping.map_io import MapSnapshot, load_map, save_map
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap

DIM = 24


def _values(count: int, width: int, seed: int = 0) -> torch.Tensor:
    """Rows like a unit mean's coefficients: norm <= 1, one large leading value."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(count, width, generator=generator) * 0.1
    rows[:, 0] += 0.8
    norms = rows.norm(dim=1, keepdim=True)
    return rows / norms * torch.rand(count, 1, generator=generator).clamp_min(0.05)


def _encoded(codes: FixedPointCodes, values: torch.Tensor) -> torch.Tensor:
    rows = torch.empty(values.shape[0], codes.row_bytes, dtype=torch.int8)
    return codes.encode(values, rows)


def test_row_layout_sizes_and_the_default_fills_256_bytes():
    assert row_bytes(222, 32) == 256  # 64 + 190 + 2 scale bytes
    assert row_bytes(10, 10) == 24  # 22 bytes padded to a multiple of 8
    assert row_bytes(7, 3) == 16
    with pytest.raises(ConfigError, match="head"):
        FixedPointCodes(4, 5)


@pytest.mark.parametrize(("width", "head"), [(40, 8), (10, 10), (7, 3)])
def test_decoding_gives_the_values_to_the_step_of_each_part(width, head):
    codes = FixedPointCodes(width, head)
    values = _values(500, width)
    rows = _encoded(codes, values)
    decoded = codes.decode(rows)
    assert (decoded[:, :head] - values[:, :head]).abs().max() <= 2.0**-16 + 1e-9
    if width > head:
        steps = codes.scales(rows).unsqueeze(1)  # max |tail| / 127, rounded to float16
        assert (decoded[:, head:] - values[:, head:]).abs().le(steps * 0.5001 + 1e-9).all()
        assert torch.allclose(steps.squeeze(1), values[:, head:].abs().amax(1) / 127, rtol=1e-3)
    # Re-encoding stored values changes nothing: an unchanged voxel does not drift.
    assert torch.equal(_encoded(codes, decoded), rows)
    padding = 2 * head + (width - head) + 2
    assert not rows[:, padding:].any()


def test_extreme_values_are_clamped_and_zero_rows_stay_zero():
    codes = FixedPointCodes(6, 2)
    values = torch.zeros(3, 6)
    values[0, 0], values[0, 1] = 1.0 + 1e-7, -1.0 - 1e-7  # one ulp outside [-1, 1]
    values[2, 2:] = 1e-9  # a tail whose scale underflows float16
    decoded = codes.decode(_encoded(codes, values))
    assert decoded[0, 0].item() == pytest.approx(32767 / 32768)
    assert decoded[0, 1].item() == pytest.approx(-32767 / 32768)
    assert torch.equal(decoded[1], torch.zeros(6))
    assert decoded[2].abs().max().item() < 1e-8


@pytest.mark.parametrize(("width", "head"), [(40, 8), (10, 10), (222, 32)])
def test_integer_scores_match_float64_products_of_the_stored_values(width, head):
    codes = FixedPointCodes(width, head)
    rows = _encoded(codes, _values(300, width, seed=1))
    queries = torch.randn(5, width, generator=torch.Generator().manual_seed(2))
    queries = queries / queries.norm(dim=1, keepdim=True)  # unit, as projected text vectors
    got = codes.scores(rows, *codes.query_columns(queries))
    exact = queries.double() @ codes.decode(rows).double().T
    assert got.shape == (5, 300)
    assert (got.double() - exact).abs().max() < 1e-5  # float16 products are off by ~1e-4


def test_the_float32_fallback_and_small_row_counts_give_identical_scores(monkeypatch):
    codes = FixedPointCodes(40, 8)
    rows = _encoded(codes, _values(64, 40))
    terms = codes.query_columns(torch.randn(3, 40, generator=torch.Generator().manual_seed(3)))
    with_int_mm = codes.scores(rows, *terms)
    assert torch.equal(codes.scores(rows[:5], *terms), with_int_mm[:, :5])  # padded to 17 rows
    monkeypatch.setattr(fixed_point, "_int_mm_missing", True)
    assert torch.equal(codes.scores(rows, *terms), with_int_mm)


@pytest.mark.parametrize("count", [3, 8, 61, 64])
def test_rows_beyond_a_multiple_of_8_on_cublaslt_are_scored_exactly_too(monkeypatch, count):
    # On CUDA the aligned prefix goes to _int_mm and the last count % 8 rows to the float path;
    # the shape limits are switched on here to run that split on the CPU.
    codes = FixedPointCodes(40, 8)
    rows = _encoded(codes, _values(count, 40, seed=5))
    terms = codes.query_columns(torch.randn(2, 40, generator=torch.Generator().manual_seed(6)))
    expected = codes.scores(rows, *terms)
    monkeypatch.setattr(fixed_point, "_cublaslt_limits", lambda rows: True)
    assert torch.equal(codes.scores(rows, *terms), expected)


def test_running_out_of_memory_is_raised_and_keeps_the_integer_product(monkeypatch):
    def out_of_memory(left, right):
        raise torch.OutOfMemoryError("CUDA out of memory")

    codes = FixedPointCodes(40, 8)
    rows = _encoded(codes, _values(64, 40))
    terms = codes.query_columns(torch.randn(2, 40, generator=torch.Generator().manual_seed(6)))
    monkeypatch.setattr(torch, "_int_mm", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        codes.scores(rows, *terms)
    assert not fixed_point._int_mm_missing  # not mistaken for a missing operator


def _axis_storage(cap: float = 50.0, head: int = 4, k: int = 8) -> VoxelEmbeddingMap:
    """An empty pca_int storage whose basis is the first k coordinate axes."""
    config = MapConfig(
        embedding_dim=DIM, feature_encoding="pca_int", pca_dim=k, pca_head_dim=head, weight_cap=cap
    )
    storage = VoxelEmbeddingMap(config)
    rows = torch.zeros(0, row_bytes(k, head), dtype=torch.int8)
    none = torch.zeros(0, dtype=torch.int64)
    basis = torch.eye(DIM)[:, :k]
    storage.load_state(torch.zeros(0, 3, dtype=torch.int64), rows, torch.zeros(0), none, basis)
    return storage


def test_a_capped_voxel_tracks_its_float32_running_mean_over_long_fusion():
    # 2000 capped updates of noisy observations: float16 coefficients rounded to nearest stall
    # short of the mean (test_pca_rounding.py); fixed point must stay within a few steps.
    storage = _axis_storage()
    generator = torch.Generator().manual_seed(4)
    key = torch.zeros(1, dtype=torch.int64)
    mean = torch.zeros(8, dtype=torch.float64)
    weight = 0.0
    target = torch.zeros(DIM)
    target[0], target[1] = 0.7, 0.3
    for _ in range(2000):
        x = target + 0.05 * torch.randn(DIM, generator=generator)
        x = x / x.norm()
        storage.fuse(key, x.unsqueeze(0), torch.ones(1), torch.zeros(3))
        mean += (x[:8].double() - mean) / (weight + 1.0)
        weight = min(weight + 1.0, 50.0)
    stored = storage.decode(storage.features)[0].double()
    assert (stored[:4] - mean[:4]).abs().max() < 2e-4  # 2^-15 steps: no stall
    assert (stored[4:] - mean[4:]).abs().max() < 3e-3  # int8 tail of a ~0.08 range


def _room_map(steps: int = 4, device: str = "cpu", **settings) -> EmbeddingMap:
    emap = EmbeddingMap(0.05, embedding_dim=DIM, device=device, **settings)
    generator = torch.Generator().manual_seed(5)
    K = np.array([[16.0, 0.0, 7.5], [0.0, 16.0, 7.5], [0.0, 0.0, 1.0]])
    for step in range(steps):
        pose = np.eye(4)
        pose[0, 3] = 0.3 * step
        depth = 1.0 + 0.5 * torch.rand(16, 16, generator=generator)
        embedding = torch.randn(DIM, 16, 16, generator=generator)
        emap.integrate(embedding.to(device), depth.to(device), K, pose)
    return emap


PCA_INT = {"feature_encoding": "pca_int", "pca_dim": 16, "pca_head_dim": 4, "pca_fit_voxels": 300}


def test_a_pca_int_map_fits_its_basis_stores_int8_rows_and_scores_close_to_exact():
    emap, exact = _room_map(**PCA_INT), _room_map()
    storage = emap.storage
    assert storage.basis is not None and storage.encoding == "pca_int"
    assert (
        storage.features.dtype == torch.int8 and storage.features.shape[1] == 24
    )  # 8 + 12 + 2, padded
    assert emap.stats()["feature_encoding"] == "pca_int"
    saved = exact.storage.bytes_per_voxel() - storage.bytes_per_voxel()
    assert saved == pytest.approx(2 * DIM - 24)
    # Scores are those of the stored coefficients divided by the tracked norms.
    query = torch.randn(DIM, generator=torch.Generator().manual_seed(6))
    query /= query.norm()
    stored = storage.decode(storage.features).double() @ (storage.basis.T.double() @ query.double())
    got = emap.query(query).cosine
    np.testing.assert_allclose(got, (stored / storage.norms.double()).numpy(), atol=1e-5)
    # Colours decode the rows (int8 bytes are not features).
    assert emap.colors("pca").shape == (len(emap), 3)


def test_a_pca_int_map_evicts_within_its_budget_and_keeps_scoring_its_rows():
    emap = _room_map(steps=10, max_voxels=600, eviction_fraction=0.1, **PCA_INT)
    storage = emap.storage
    assert storage.encoding == "pca_int" and storage.evicted_count > 0 and len(emap) <= 600
    query = torch.randn(DIM, generator=torch.Generator().manual_seed(8))
    query /= query.norm()
    stored = storage.decode(storage.features).double() @ (storage.basis.T.double() @ query.double())
    np.testing.assert_allclose(
        emap.query(query).cosine, (stored / storage.norms.double()).numpy(), atol=1e-5
    )


def test_a_pca_int_map_round_trips_through_a_file_exactly(tmp_path):
    emap = _room_map(**PCA_INT)
    loaded = EmbeddingMap.load(emap.save(tmp_path / "m.dvemap"))
    assert torch.equal(loaded.storage.features, emap.storage.features)
    assert torch.equal(loaded.storage.norms, emap.storage.norms)
    query = np.random.default_rng(1).normal(size=DIM)
    np.testing.assert_array_equal(loaded.query(query).cosine, emap.query(query).cosine)


def test_the_plain_numpy_recipe_of_the_format_document_decodes_pca_int_rows(tmp_path):
    document = Path(__file__).parents[2] / "docs" / "map_format.md"
    recipe = document.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    emap = _room_map(**PCA_INT)
    emap.save(tmp_path / "scene.dvemap")
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the recipe opens "scene.dvemap"
    try:
        exec(compile(recipe, str(document), "exec"), namespace)
    finally:
        os.chdir(cwd)
    storage = emap.storage
    expected = storage.decode(storage.features) @ storage.basis.T
    np.testing.assert_allclose(namespace["embeddings"], expected.numpy(), atol=1e-6)


def _snapshot(tmp_path) -> MapSnapshot:
    emap = _room_map(**PCA_INT)
    emap.save(tmp_path / "m.dvemap")
    return load_map(tmp_path / "m.dvemap")


def _bad_scale(rows: np.ndarray) -> np.ndarray:
    rows = rows.copy()
    rows[0, 4 + 16 : 4 + 16 + 2] = np.array([-1.0], np.float16).view(np.int8)
    return rows


def _bad_padding(rows: np.ndarray) -> np.ndarray:
    rows = rows.copy()
    rows[0, -1] = 1
    return rows


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": lambda r: r[:, :-8].copy()}, "have 24 bytes, got 16"),
        ({"features": lambda r: r.astype(np.float16)}, "features must have dtype int8"),
        ({"features": _bad_scale}, "negative, infinite or NaN scale"),
        ({"features": _bad_padding}, "non-zero padding"),
        ({"norms": lambda n: None}, "pca_int maps need norms"),
        ({"pca_head_dim": lambda h: None}, "pca_head_dim belongs to pca_int maps only"),
        ({"pca_head_dim": lambda h: 17}, r"pca_head_dim must be in 1..16"),
        ({"basis": lambda b: None}, "basis must be a numpy array"),
        ({"pca_head_dim": lambda h: 0}, "pca_head_dim must be an int >= 1"),
    ],
)
def test_snapshots_of_pca_int_maps_are_validated(tmp_path, change, message):
    snapshot = _snapshot(tmp_path)
    fields = {name: fn(getattr(snapshot, name)) for name, fn in change.items()}
    with pytest.raises(InputError, match=message):
        dataclasses.replace(snapshot, **fields)


def test_a_snapshot_whose_parts_are_too_large_for_exact_sums_is_refused(tmp_path):
    snapshot = _snapshot(tmp_path)
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((600, 560)))[0]
    rows = np.zeros((len(snapshot.voxels), row_bytes(560, 4)), np.int8)
    with pytest.raises(InputError, match="at most 511 coefficients, got 4 \\+ 556"):
        dataclasses.replace(
            snapshot, embedding_dim=600, basis=basis.astype(np.float32), features=rows
        )


def test_loading_a_pca_int_file_into_other_settings_is_refused(tmp_path):
    snapshot = _snapshot(tmp_path)
    settings = dict(snapshot.settings, pca_head_dim=8)
    save_map(tmp_path / "x.dvemap", dataclasses.replace(snapshot, settings=settings))
    with pytest.raises(MapFileError, match="pca_head_dim in settings and header disagree"):
        EmbeddingMap.load(tmp_path / "x.dvemap")
    settings = dict(snapshot.settings, feature_encoding="pca")
    save_map(tmp_path / "y.dvemap", dataclasses.replace(snapshot, settings=settings))
    with pytest.raises(MapFileError, match="settings say 'pca', the header 'pca_int'"):
        EmbeddingMap.load(tmp_path / "y.dvemap")


def test_load_state_refuses_rows_of_another_encoding_and_keeps_the_map():
    storage = _axis_storage()
    before = storage.config
    with pytest.raises(ConfigError, match="int8 rows of 16 values, got torch.float16"):
        storage.load_state(
            torch.zeros(1, 3, dtype=torch.int64),
            torch.zeros(1, 8, dtype=torch.float16),
            torch.ones(1),
            torch.zeros(1, dtype=torch.int64),
            torch.eye(DIM)[:, :8],
        )
    assert storage.config == before and storage.encoding == "pca_int" and len(storage) == 0


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"pca_head_dim": 17}, r"pca_head_dim \(17\) must be at most pca_dim \(16\)"),
        ({"pca_head_dim": 0}, "pca_head_dim must be an integer >= 1"),
        ({"pca_dim": DIM}, "pca_dim"),
    ],
)
def test_invalid_pca_int_settings_are_rejected(settings, match):
    with pytest.raises(ConfigError, match=match):
        MapConfig(embedding_dim=DIM, **{**PCA_INT, **settings})


def test_pca_dim_0_fills_256_bytes_per_voxel_whatever_the_encoding():
    assert MapConfig(feature_encoding="pca").basis_dim == 128  # 128 float16
    int_config = MapConfig(feature_encoding="pca_int")
    assert row_bytes(int_config.basis_dim, int_config.pca_head_dim) == 256  # 32 + 190
    wide_head = MapConfig(feature_encoding="pca_int", pca_head_dim=64)
    assert row_bytes(wide_head.basis_dim, 64) == 256 and wide_head.basis_dim == 190
    assert MapConfig(feature_encoding="pca", pca_dim=96).basis_dim == 96
    with pytest.raises(ConfigError, match=r"pca_dim \(128 by default\) must be in 1..63"):
        MapConfig(feature_encoding="pca", embedding_dim=64)


def test_parts_too_large_for_exact_integer_sums_are_rejected():
    wide = {**PCA_INT, "pca_dim": 600, "pca_fit_voxels": 600}
    with pytest.raises(ConfigError, match="at most 511 fixed-point and 511 int8"):
        MapConfig(embedding_dim=768, **{**wide, "pca_head_dim": 32})  # 568 int8
    MapConfig(embedding_dim=768, **{**wide, "pca_head_dim": 100})  # 100 + 500: accepted
    with pytest.raises(ConfigError, match="at most 511"):
        FixedPointCodes(1100, 550)


@pytest.mark.gpu
def test_a_pca_int_map_on_cuda_scores_like_the_one_on_the_cpu():
    cpu, cuda = _room_map(**PCA_INT), _room_map(device="cuda", **PCA_INT)
    assert cuda.storage.encoding == "pca_int"
    assert torch.equal(cpu.storage.keys, cuda.storage.keys.cpu())
    query = torch.randn(DIM, generator=torch.Generator().manual_seed(9))
    # Same frames, other kernels (projection, eigh): equal up to float rounding.
    np.testing.assert_allclose(cuda.query(query).cosine, cpu.query(query).cosine, atol=2e-3)


@pytest.mark.gpu
def test_pca_int_scores_on_cuda_equal_those_on_the_cpu():
    codes = FixedPointCodes(222, 32)
    rows = _encoded(codes, _values(1000, 222))
    queries = torch.randn(5, 222, generator=torch.Generator().manual_seed(7))
    on_cpu = codes.scores(rows, *codes.query_columns(queries))
    on_cuda = codes.scores(rows.cuda(), *codes.query_columns(queries.cuda()))
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=1e-6)
