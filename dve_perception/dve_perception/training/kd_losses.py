"""Optional distillation terms: TransKD patch-embedding alignment, LIX-style CKA, weighted DKD.

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
- `dkd_loss` is Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): alpha * TCKD +
  beta * NCKD, both scaled by T^2. Optional per-logit weights implement LIX's "dynamically
  weighted" DKD in our own interpretation (see `dkd_terms`); `teacher_confidence_weights` is one
  weighting (ours, not a published controller).
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
    "dkd_loss",
    "dkd_terms",
    "linear_cka",
    "teacher_confidence_weights",
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


def _flatten_logits(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, K) or (B, K, H, W) logits with (B,) or (B, H, W) targets -> rows (M, K), (M,)."""
    if student.shape != teacher.shape or student.ndim not in (2, 4):
        raise InputError(
            f"student and teacher logits must share a (B, K) or (B, K, H, W) shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if target.shape != (student.shape[0], *student.shape[2:]):
        raise InputError(
            f"target must be {(student.shape[0], *student.shape[2:])} class indices, got "
            f"{tuple(target.shape)}"
        )
    k = student.shape[1]
    if student.ndim == 4:
        student = student.permute(0, 2, 3, 1).reshape(-1, k)
        teacher = teacher.permute(0, 2, 3, 1).reshape(-1, k)
    return student, teacher, target.reshape(-1).long()


def _mass_gap(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Elementwise q - p (masked entries, where both are exp(-inf) = 0, give 0)."""
    return log_q.exp() - log_p.exp()


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Elementwise p * (log p - log q) with 0 log 0 = 0.

    Entries where log p is -inf (a masked class, or p_t = 1 exactly) contribute 0. Both logs are
    replaced by 0 there *before* the arithmetic so that no inf - inf NaN reaches the backward pass
    (torch.where alone would still propagate NaN gradients from the unselected branch).
    """
    keep = torch.isfinite(log_p)
    lp = torch.where(keep, log_p, torch.zeros_like(log_p))
    lq = torch.where(keep, log_q, torch.zeros_like(log_q))
    return torch.where(keep, lp.exp() * (lp - lq), torch.zeros_like(lp))


def _row_weights(weights: torch.Tensor, shape: torch.Size, rows: int) -> torch.Tensor:
    """(K,), (B, K) or the logits' own shape -> (rows, K) non-negative weights."""
    b, k = shape[0], shape[1]
    if weights.shape == (k,):
        return weights.expand(rows, k)
    if weights.shape == (b, k):
        return weights.repeat_interleave(rows // b, dim=0)
    if weights.shape == shape:
        return weights.permute(0, *range(2, len(shape)), 1).reshape(rows, k)
    raise InputError(
        f"weights must be ({k},), ({b}, {k}) or the logits' shape {tuple(shape)}, got "
        f"{tuple(weights.shape)}"
    )


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 4.0,
    weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example TCKD and NCKD (without alpha, beta or T^2) and the teacher's p_t.

    With b = (p_t, 1 - p_t) and p-hat the distribution over non-target classes (all at
    temperature T): TCKD = KL(b^T || b^S), NCKD = KL(p-hat^T || p-hat^S), and the classical KD
    loss decomposes as KD = TCKD + (1 - p_t^T) NCKD (DKD, Eq. 1).

    Per-logit weights (our reading of LIX's dynamically weighted DKD) scale each summand of the
    generalised KL, d(p, q) = p log(p / q) - p + q (>= 0 per summand, unlike p log(p / q)): the
    target class's weight w_t scales TCKD, and w_k scales class k's term of NCKD:
    NCKD_w = sum_{k != t} w_k d(p-hat^T_k, p-hat^S_k). Over a row the -p + q parts sum to 0, so
    all-ones weights give DKD; any non-negative weights keep the loss >= 0 with its minimum at
    the teacher's distribution.

    Args:
        student_logits: (B, K) or (B, K, H, W).
        teacher_logits: same shape as the student's.
        target: (B,) or (B, H, W) class indices; `ignore_index` rows are dropped.
        temperature: softmax temperature T > 0.
        weights: optional non-negative (K,), (B, K) or logits-shaped weights.
        ignore_index: target value of rows to skip (void pixels).

    Returns:
        (tckd, nckd, teacher_p_target), each (M,) over the M kept rows.

    Raises:
        InputError: for mismatched shapes, targets outside [0, K), bad weights or temperature.
    """
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    shape = student_logits.shape
    s, t, y = _flatten_logits(student_logits, teacher_logits, target)
    k = s.shape[1]
    w = None
    if weights is not None:
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise InputError("weights must be finite and non-negative")
        w = _row_weights(weights.to(s.dtype), shape, s.shape[0])
    keep = y != ignore_index
    s, t, y = s[keep], t[keep], y[keep]
    w = w[keep] if w is not None else None
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise InputError(
            f"target classes must be in [0, {k}) or {ignore_index}, got "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    s, t = s.float() / temperature, t.float() / temperature
    is_target = F.one_hot(y, k).bool()
    binary = []
    for logits in (s, t):
        log_all = torch.logsumexp(logits, dim=1)
        log_pt = logits.gather(1, y[:, None])[:, 0] - log_all
        log_rest = torch.logsumexp(logits.masked_fill(is_target, float("-inf")), dim=1) - log_all
        binary.append(torch.stack([log_pt, log_rest], dim=1))
    tckd_terms = _kl_rows(binary[1], binary[0])
    log_hat_s = F.log_softmax(s.masked_fill(is_target, float("-inf")), dim=1)
    log_hat_t = F.log_softmax(t.masked_fill(is_target, float("-inf")), dim=1)
    nckd_terms = _kl_rows(log_hat_t, log_hat_s)
    if w is not None:
        # Weighted, each summand must stay a divergence on its own: p log(p/q) alone can be
        # negative, so a non-uniform weighting of it would let the student "win" by making its
        # distribution sharper than the teacher's. The generalised KL summand p log(p/q) - p + q
        # is >= 0 and 0 only at p = q; its extra terms sum to 0 over a row, so all-ones weights
        # still give DKD exactly.
        tckd_terms = (tckd_terms + _mass_gap(binary[1], binary[0])) * w.gather(1, y[:, None])
        nckd_terms = (nckd_terms + _mass_gap(log_hat_t, log_hat_s)) * w
    return tckd_terms.sum(dim=1), nckd_terms.sum(dim=1), binary[1][:, 0].exp()


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """DKD: (alpha * TCKD + beta * NCKD) * T^2, averaged over kept examples/pixels.

    Matches the official implementation (mdistiller), which sums the KL terms over the batch and
    divides by the batch size. See `dkd_terms` for the arguments and the per-logit weights.

    Returns:
        0-dim tensor; 0 (still connected to the student's graph) when every row is ignored.
    """
    tckd, nckd, _ = dkd_terms(
        student_logits,
        teacher_logits,
        target,
        temperature=temperature,
        weights=weights,
        ignore_index=ignore_index,
    )
    if tckd.numel() == 0:
        return student_logits.sum() * 0.0
    return (alpha * tckd.mean() + beta * nckd.mean()) * temperature**2


def teacher_confidence_weights(
    teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-logit weights from the teacher's own confidence (our weighting, not LIX's controller).

    The target logit gets weight 1; non-target class k gets (K - 1) * p-hat^T_k, the teacher's
    probability of k among the non-target classes rescaled to mean 1. NCKD then concentrates on
    the classes the teacher finds confusable with the true one (its "dark knowledge") and
    ignores classes it rules out, while the loss scale stays comparable to unweighted DKD.
    Ignored targets (outside [0, K)) get all-ones weights. The result is detached.

    Args:
        teacher_logits: (B, K) or (B, K, H, W).
        target: (B,) or (B, H, W) class indices.
        temperature: softmax temperature used for p-hat.

    Returns:
        Weights with the logits' shape.
    """
    k = teacher_logits.shape[1]
    if target.shape != (teacher_logits.shape[0], *teacher_logits.shape[2:]):
        raise InputError(
            f"target must be {(teacher_logits.shape[0], *teacher_logits.shape[2:])}, got "
            f"{tuple(target.shape)}"
        )
    y = target.long().unsqueeze(1)
    valid = (y >= 0) & (y < k)
    is_target = torch.zeros_like(teacher_logits, dtype=torch.bool).scatter_(
        1, y.clamp(0, k - 1), valid
    )
    logits = teacher_logits.detach().float() / temperature
    p_hat = F.softmax(logits.masked_fill(is_target, float("-inf")), dim=1)
    weights = torch.where(is_target, torch.ones_like(p_hat), (k - 1) * p_hat)
    return torch.where(valid, weights, torch.ones_like(weights))
