"""Decoupled knowledge distillation (DKD) with optional per-logit weights, for closed-set heads.

`dkd_loss` is Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): alpha * TCKD +
beta * NCKD, both scaled by T^2. Optional per-logit weights implement LIX's "dynamically
weighted" DKD in our own interpretation (see `dkd_terms`); `teacher_confidence_weights` is one
weighting (ours, not a published controller).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dve_perception.errors import InputError

__all__ = ["dkd_loss", "dkd_terms", "teacher_confidence_weights"]


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
