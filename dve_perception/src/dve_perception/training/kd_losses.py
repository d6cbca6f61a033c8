"""Optional feature distillation terms: TransKD patch-embedding alignment, LIX-style CKA.

- `PatchEmbeddingAlignment` follows TransKD's PEA (Liu et al., "TransKD: Transformer Knowledge
  Distillation for Efficient Semantic Segmentation", arXiv 2202.13393): a learnable linear map per
  stage from student to teacher patch-embedding width, MSE against the teacher's embeddings,
  stage weights alpha = (0.1, 0.1, 0.5, 1).
- `linear_cka` is linear centred kernel alignment (Kornblith et al., ICML 2019) with the biased
  HSIC estimator. `CKALoss` is 1 - CKA between *recalibrated* student features and teacher
  features, as in LIX's adaptively recalibrated feature distillation (Guo et al., arXiv
  2403.08215). LIX recalibrates with Laplace-kernel regression; that exact formulation was not
  available here, so `FeatureRecalibration` is a documented substitute: a learnable linear
  projection followed by per-channel standardisation over the sampled tokens.

The logit distillation (weighted DKD) is in `training/dkd.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.errors import InputError

__all__ = [
    "TRANSKD_STAGE_WEIGHTS",
    "CKALoss",
    "FeatureRecalibration",
    "PatchEmbeddingAlignment",
    "linear_cka",
]

#: TransKD's per-stage weights for the patch-embedding loss, shallow to deep.
TRANSKD_STAGE_WEIGHTS = (0.1, 0.1, 0.5, 1.0)


def _to_map(x: torch.Tensor, name: str, grid: tuple[int, int] | None) -> torch.Tensor:
    """(B, C, h, w) maps pass through; (B, N, C) tokens become maps using `grid` or a square."""
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise InputError(f"{name} must be (B, N, C) tokens or (B, C, h, w), got {tuple(x.shape)}")
    n = x.shape[1]
    if grid is None:
        side = round(n**0.5)
        if side * side != n:
            raise InputError(
                f"{name} has {n} tokens, not a square grid; pass its (h, w) grid or a (B, C, h, w) "
                "map"
            )
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise InputError(f"{name} grid {grid} does not hold its {n} tokens")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class PatchEmbeddingAlignment(nn.Module):
    """TransKD patch-embedding alignment: sum_s alpha_s * MSE(Linear_s(student_s), teacher_s).

    Embeddings are (B, N, C) token sequences (TransKD's form; row-major grids) or (B, C, h, w)
    maps. The linear map acts on channels. When the grids differ, the *projected* student map is
    resized bilinearly (align_corners=False) to the teacher's grid; projecting first is exact
    because both operations are linear, and cheaper when the student grid is smaller.

    Args:
        student_dims: student patch-embedding width per stage.
        teacher_dims: teacher width per stage (same number of stages).
        weights: per-stage loss weights (TransKD's alpha by default).
    """

    def __init__(
        self,
        student_dims: Sequence[int],
        teacher_dims: Sequence[int],
        weights: Sequence[float] = TRANSKD_STAGE_WEIGHTS,
    ) -> None:
        super().__init__()
        if not (len(student_dims) == len(teacher_dims) == len(weights)):
            raise InputError(
                f"need one student dim, teacher dim and weight per stage; got "
                f"{len(student_dims)}, {len(teacher_dims)} and {len(weights)}"
            )
        self.projections = nn.ModuleList(
            nn.Linear(s, t) for s, t in zip(student_dims, teacher_dims, strict=True)
        )
        self.weights = tuple(float(w) for w in weights)

    def forward(
        self,
        student: Sequence[torch.Tensor],
        teacher: Sequence[torch.Tensor],
        student_grids: Sequence[tuple[int, int] | None] | None = None,
        teacher_grids: Sequence[tuple[int, int] | None] | None = None,
    ) -> torch.Tensor:
        """Weighted sum of per-stage MSEs (0-dim); grids are needed only for non-square tokens."""
        n = len(self.projections)
        if len(student) != n or len(teacher) != n:
            raise InputError(
                f"expected {n} stages, got {len(student)} student / {len(teacher)} teacher"
            )
        s_grids = student_grids or [None] * n
        t_grids = teacher_grids or [None] * n
        total = student[0].new_zeros(())
        for i, (proj, w) in enumerate(zip(self.projections, self.weights, strict=True)):
            s = _to_map(student[i], f"student stage {i}", s_grids[i])
            t = _to_map(teacher[i], f"teacher stage {i}", t_grids[i])
            if s.shape[1] != proj.in_features or t.shape[1] != proj.out_features:
                raise InputError(
                    f"stage {i}: expected {proj.in_features} student / {proj.out_features} "
                    f"teacher channels, got {s.shape[1]} / {t.shape[1]}"
                )
            s = proj(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            total = total + w * F.mse_loss(s, t.to(s.dtype))
        return total


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same N examples.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc, i.e.
    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for linear kernels (the 1/(N-1)^2 factors cancel).
    In [0, 1]; invariant to orthogonal transforms, isotropic scaling and translation of either
    argument, but not to general invertible linear maps.

    Args:
        x: (N, D1) features.
        y: (N, D2) features.

    Returns:
        0-dim float32 (or float64 for float64 inputs) tensor; 0 when either input is constant.

    Raises:
        InputError: for inputs that are not 2-D with the same N >= 2.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise InputError(
            f"linear_cka needs (N, D1) and (N, D2) with the same N >= 2, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    xc = x.to(dtype) - x.to(dtype).mean(dim=0, keepdim=True)
    yc = y.to(dtype) - y.to(dtype).mean(dim=0, keepdim=True)
    # Feature-space products (D x D) rather than N x N Gram matrices: same value, O(N D^2) memory.
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    norm_x = torch.linalg.matrix_norm(xc.T @ xc)
    norm_y = torch.linalg.matrix_norm(yc.T @ yc)
    return cross / (norm_x * norm_y).clamp_min(torch.finfo(dtype).tiny)


class FeatureRecalibration(nn.Module):
    """Learnable linear projection then per-channel standardisation over the given tokens.

    Stands in for LIX's kernel-regression recalibration: the projection lets the student's
    features be compared with the teacher's through a learned linear change of basis (which CKA
    alone does not forgive), and standardisation stops the loss from rewarding a few high-variance
    channels.
    """

    def __init__(self, student_dim: int, teacher_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, student_dim) -> (N, teacher_dim) standardised over N."""
        z = self.proj(tokens)
        return (z - z.mean(dim=0, keepdim=True)) / (z.std(dim=0, keepdim=True) + self.eps)


def _tokens(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C, h, w) or (B, N, C) or (N, C) -> (M, C) rows of examples."""
    if x.ndim == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if x.ndim == 3:
        return x.reshape(-1, x.shape[2])
    if x.ndim == 2:
        return x
    raise InputError(f"{name} must be (N, C), (B, N, C) or (B, C, h, w), got {tuple(x.shape)}")


class CKALoss(nn.Module):
    """1 - linear CKA(recalibration(student), teacher) over a seeded subsample of tokens.

    Student and teacher must describe the same pixels/tokens: (B, C, h, w) maps at the same
    (h, w) (resize beforehand), (B, N, C) tokens or (N, C). At most `max_tokens` rows are used
    (the D x D products are cheap, but the recalibration and its backward are per row); the rows
    come from a generator seeded once, so runs are reproducible and each call sees new rows.

    Args:
        recalibration: module mapping (M, C_s) student rows before CKA; None compares raw rows.
        max_tokens: upper bound on rows per call.
        seed: seed of the subsampling generator.
    """

    def __init__(
        self, recalibration: nn.Module | None = None, max_tokens: int = 4096, seed: int = 0
    ) -> None:
        super().__init__()
        if max_tokens < 2:
            raise InputError(f"max_tokens must be at least 2, got {max_tokens}")
        self.recalibration = recalibration
        self.max_tokens = max_tokens
        self._generator = torch.Generator().manual_seed(seed)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """0-dim loss in [0, 1]."""
        if student.ndim == 4 and teacher.ndim == 4 and student.shape[-2:] != teacher.shape[-2:]:
            raise InputError(
                f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} maps differ "
                "in size; resize one so rows describe the same pixels"
            )
        s, t = _tokens(student, "student"), _tokens(teacher, "teacher")
        if s.shape[0] != t.shape[0]:
            raise InputError(f"student has {s.shape[0]} rows but teacher has {t.shape[0]}")
        if s.shape[0] > self.max_tokens:
            idx = torch.randperm(s.shape[0], generator=self._generator)[: self.max_tokens]
            idx = idx.to(s.device)
            s, t = s[idx], t[idx]
        if self.recalibration is not None:
            s = self.recalibration(s)
        return 1.0 - linear_cka(s, t.detach())
