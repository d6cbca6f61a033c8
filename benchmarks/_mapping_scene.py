"""Helpers of bench_mapping.py: the benchmark scene, synthetic voxel features, metrics, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.mapping.fixed_point_codes import FixedPointCodes
from dve_perception.mapping.voxel_map import VoxelEmbeddingMap
from dve_perception.simulation import (
    RenderedFrame,
    SmoothFeatureField,
    SyntheticScene,
    make_embeddings,
    make_room_scene,
    orbit_trajectory,
    pinhole_intrinsics,
    render,
)

VOXEL_SIZE_M = 0.05
DIM = 768
FIELD_AMPLITUDE = 0.5
PIXEL_NOISE = 0.3
MAX_DEPTH_M = 10.0  # the whole room
#: The room's faces lie on multiples of 5 cm, i.e. on voxel boundaries, where float32 rounding
#: decides the side; shifting the world by a generic offset avoids that degeneracy (as the tests).
WORLD_OFFSET_M = np.array([0.0123, 0.0171, 0.0219])


@dataclass
class BenchScene:
    """The synthetic room, its feature field and the camera poses of one orbit."""

    scene: SyntheticScene
    field: SmoothFeatureField
    poses: list[np.ndarray]

    def frame(self, index: int, height: int, width: int, rng: np.random.Generator):
        """Render pose `index` and return (frame, K, shifted pose, channels-last embedding)."""
        K = pinhole_intrinsics(width, height)
        frame: RenderedFrame = render(self.scene, K, self.poses[index], height, width)
        emb = make_embeddings(
            frame,
            self.scene,
            pixel_noise_std=PIXEL_NOISE,
            field=self.field,
            rng=rng,
            channels_last=True,
        )
        pose = frame.T_world_cam.copy()
        pose[:3, 3] += WORLD_OFFSET_M
        return frame, K, pose, emb


def bench_scene(num_frames: int, seed: int = 0) -> BenchScene:
    """768-d room, field amplitude 0.5, `num_frames` orbit poses (seeded)."""
    scene = make_room_scene(seed=seed, embedding_dim=DIM)
    field = SmoothFeatureField.random(dim=DIM, amplitude=FIELD_AMPLITUDE, seed=seed + 1)
    return BenchScene(scene, field, orbit_trajectory(scene, num_frames, seed=seed))


#: Where the maps of sections 1 and 2 live (`bench_mapping.py --device`); the scene, the fitted
#: bases and sections 3-5 stay on the CPU.
DEVICE = torch.device("cpu")


def set_device(name: str) -> None:
    """Put the maps of sections 1 and 2 on `name` ("cpu" or "cuda")."""
    global DEVICE
    DEVICE = torch.device(name)


def device_name() -> str:
    """The device type of the maps of sections 1 and 2: "cpu" or "cuda"."""
    return DEVICE.type


def on_device(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The array as a tensor on the maps' device, as the backends hand frames over.

    On the CPU this is a view (no copy); on a GPU the fused backend's embeddings are already CUDA
    tensors, so the copy is made here, outside the timed call (`Tensor.to` keeps a channel-last
    view's strides).
    """
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    return tensor.to(DEVICE)


def synchronize() -> None:
    """Wait for the device's queued work, so that a wall-clock time includes it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def new_map(**settings) -> EmbeddingMap:
    return EmbeddingMap(
        VOXEL_SIZE_M, embedding_dim=DIM, max_depth_m=MAX_DEPTH_M, device=DEVICE, **settings
    )


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of `x` scaled to unit norm."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


#: Text-like queries of the fidelity measurements. A query's recall varies from ~0.2 to 1, so the
#: 20 used before left a sampling error of ~0.01 on the mean (two draws of 200 differed by 0.017);
#: with 1000 it is ~0.003.
FIDELITY_TEXT_QUERIES = 1000


def text_like_queries(scene: SyntheticScene, count: int, seed: int) -> torch.Tensor:
    """(count, D) normalize(prototype of a random label + 0.5 * random unit vector)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.from_numpy(np.array(scene.prototypes))
    labels = torch.randint(0, len(protos), (count,), generator=gen)
    noise = unit(torch.randn(count, protos.shape[1], generator=gen))
    return unit(protos[labels] + 0.5 * noise)


def sample_voxel_features(
    bench: BenchScene, n: int, seed: int, chunk: int = 131_072
) -> tuple[torch.Tensor, torch.Tensor]:
    """N unique voxels (the first n of a cube grid) with scene-like unit float16 features.

    Feature = normalize(prototype of a random label + field(voxel centre)), as the fused voxel
    means of the room look without pixel noise.
    """
    side = int(np.ceil(n ** (1 / 3) - 1e-9))
    voxels = np.stack(np.unravel_index(np.arange(n), (side, side, side)), axis=1).astype(np.int64)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(bench.scene.prototypes), n)
    features = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        centres = (voxels[start:stop] + 0.5) * VOXEL_SIZE_M
        block = bench.scene.prototypes[labels[start:stop]] + bench.field(centres)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        features[start:stop] = block
    return torch.from_numpy(voxels), torch.from_numpy(features)


def storage_copy(
    voxels: torch.Tensor, features: torch.Tensor, basis: torch.Tensor | None = None, **settings
) -> VoxelEmbeddingMap:
    """A `VoxelEmbeddingMap` holding `features` (weights 1, last seen 0) via `load_state`."""
    n = voxels.shape[0]
    config = MapConfig(
        voxel_size_m=VOXEL_SIZE_M, embedding_dim=DIM, max_voxels=max(n, 1), **settings
    )
    storage = VoxelEmbeddingMap(config)
    storage.load_state(voxels, features, torch.ones(n), torch.zeros(n, dtype=torch.int64), basis)
    return storage


def fitted_basis(voxels: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
    """The basis `VoxelEmbeddingMap.fit_basis` fits on these voxels: (D, k) float32."""
    storage = storage_copy(
        voxels, features, feature_encoding="pca", pca_dim=k, pca_fit_voxels=max(k, len(voxels))
    )
    storage.fit_basis()
    assert storage.basis is not None
    return storage.basis


def project(features: torch.Tensor, basis: torch.Tensor, chunk: int = 131_072) -> torch.Tensor:
    """float16 coefficients features @ basis, chunked (bounds float32 temporaries)."""
    out = torch.empty(features.shape[0], basis.shape[1], dtype=torch.float16)
    for start in range(0, features.shape[0], chunk):
        out[start : start + chunk] = features[start : start + chunk].to(torch.float32) @ basis
    return out


def project_fixed(
    features: torch.Tensor, basis: torch.Tensor, head: int, chunk: int = 131_072
) -> torch.Tensor:
    """pca_int rows (fixed_point_codes.py) of features @ basis, chunked."""
    codes = FixedPointCodes(basis.shape[1], head)
    out = torch.empty(features.shape[0], codes.row_bytes, dtype=torch.int8)
    for start in range(0, features.shape[0], chunk):
        values = features[start : start + chunk].to(torch.float32) @ basis
        codes.encode(values, out[start : start + chunk])
    return out


def cosines(features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(N, Q) exact float32 cosines of (N, D) stored vectors with unit (Q, D) queries."""
    f = features.to(torch.float32)
    return (f @ queries.T) / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def quantized(features: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-voxel-scale integer quantisation (float16 scale), reconstructed as float32."""
    f = features.to(torch.float32)
    levels = 2 ** (bits - 1) - 1
    scale = (f.abs().amax(dim=1, keepdim=True) / levels).to(torch.float16).to(torch.float32)
    scale = scale.clamp_min(1e-8)
    return (f / scale).round().clamp(-levels, levels) * scale


def pca_mixed_scores(
    features: torch.Tensor, queries: torch.Tensor, basis: torch.Tensor, head: int, bits: int
) -> torch.Tensor:
    """(N, Q) scores of a mixed-precision PCA code, divided by the exact norm |m|.

    The first `head` coefficients are float16, the remaining `basis.shape[1] - head` are
    `bits`-bit integers with one float16 scale per voxel (`quantized`). Dividing by |m| (stored
    beside the code) instead of by the code's own norm removes the bias of the truncation.
    """
    f = features.to(torch.float32)
    coef = f @ basis
    tail = coef[:, head:]
    if tail.shape[1]:
        tail = quantized(tail, bits)
    coef = torch.cat([coef[:, :head].to(torch.float16).to(torch.float32), tail], dim=1)
    return (coef @ (queries @ basis).T) / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def noisy_agreement(ref: torch.Tensor, std: float, repeats: int = 5, seed: int = 0) -> float:
    """Mean top-10 agreement of `ref` with `ref` + independent Gaussian noise of `std`.

    Any code whose score errors look like independent noise of this size gets about this.
    """
    gen = torch.Generator().manual_seed(seed)
    runs = [
        float(topk_agreement(ref, ref + std * torch.randn(ref.shape, generator=gen)).mean())
        for _ in range(repeats)
    ]
    return statistics.mean(runs)


def gaussian_rate_bytes(features: torch.Tensor, queries: torch.Tensor, error_std: float) -> float:
    """Bytes per voxel that any code needs for score errors of `error_std` (Gaussian model).

    Rate-distortion of a Gaussian source with the voxel means' covariance (eigenvalues l_i):
    reverse water-filling at level t costs sum_i max(0, log2(l_i / t) / 2) bits and leaves an
    error of variance min(l_i, t) along eigenvector i, i.e. a score error variance of
    sum_i <q, v_i>^2 min(l_i, t) for query q. t is the largest level at which the worst query
    stays within `error_std`. The residual of the means is an average of pixel noise (near
    Gaussian), so this is the rate a per-voxel code needs, whatever its design.
    """
    f = features.to(torch.float64)
    lam, vec = torch.linalg.eigh(torch.cov((f / f.norm(dim=1, keepdim=True)).T))
    lam = lam.clamp_min(1e-30)
    energy = (queries.to(torch.float64) @ vec) ** 2  # (Q, D)
    lo, hi = 1e-16, 1.0
    for _ in range(80):  # bisection on a log scale
        mid = (lo * hi) ** 0.5
        worst = (energy * lam.clamp_max(mid)).sum(dim=1).max().sqrt()
        lo, hi = (lo, mid) if worst > error_std else (mid, hi)
    return float((torch.log2(lam / lo) / 2).clamp_min(0).sum()) / 8


def topk_agreement(ref: torch.Tensor, approx: torch.Tensor, k: int = 10) -> torch.Tensor:
    """(Q,) |top-k of ref ∩ top-k of approx| / k per query column."""
    a = ref.topk(k, dim=0).indices.T
    b = approx.topk(k, dim=0).indices.T
    return (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).to(torch.float32).mean(dim=1)


def topk_within(
    ref: torch.Tensor, approx: torch.Tensor, tolerance: float, k: int = 10
) -> torch.Tensor:
    """(Q,) fraction of approx's top-k whose exact score is within `tolerance` of ref's k-th best.

    Strict top-k agreement counts a swap of two voxels whose exact scores differ by 1e-5 as a
    miss; this counts an answer as right when it is as good as the exact top-k up to a tolerance.
    """
    kth = ref.topk(k, dim=0).values[-1]  # (Q,)
    chosen = approx.topk(k, dim=0).indices  # (k, Q)
    return (ref.gather(0, chosen) >= kth - tolerance).to(torch.float32).mean(dim=0)


def spearman(ref: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """(Q,) Spearman rank correlation per query column (argsort ranks, ties broken by order)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x)
        order = x.argsort(dim=0)
        r.scatter_(0, order, torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1).expand_as(x))
        return r - r.mean(dim=0)

    ra, rb = ranks(ref.double()), ranks(approx.double())
    return ((ra * rb).sum(0) / (ra.norm(dim=0) * rb.norm(dim=0))).to(torch.float32)


def median_ms(repeats: int, fn: Callable[..., object], *args: object) -> float:
    """Median wall time in ms of `fn(*args)` over `repeats` runs after one warm-up run."""
    fn(*args)
    return statistics.median(timed_ms(fn, *args) for _ in range(repeats))


def timed_ms(fn: Callable[..., object], *args: object) -> float:
    """Wall time in ms of one call `fn(*args)`, including the device work it queued."""
    synchronize()
    t = time.perf_counter()
    fn(*args)
    synchronize()
    return (time.perf_counter() - t) * 1e3


def machine_line() -> str:
    """CPU model, cores, torch/numpy versions and threads, load average."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"machine: {model}, {os.cpu_count()} logical CPUs; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, python "
        f"{platform.python_version()}; load average {load}"
    ) + (f"; maps on {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else "")


def print_table(
    title: str, header: str, rows: Sequence[Sequence[object]], notes: Sequence[str] = ()
) -> None:
    """Print a markdown table ('|'-separated header): first column left, others right-aligned."""
    columns = header.split("|")
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    print(f"\n## {title}")
    print(line(columns))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(line(row))
    for note in notes:
        print(note)


def target_note(value: float, limit: float, unit_name: str = "ms") -> str:
    """'yes' or 'no (x N.N)' for value <= limit."""
    return "yes" if value <= limit else f"no (x{value / limit:.1f} over {limit:g} {unit_name})"
