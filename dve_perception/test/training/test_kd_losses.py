"""Defining properties of the distillation terms: TransKD PEA, linear CKA, (weighted) DKD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dve_perception.errors import InputError
from dve_perception.training.dkd import dkd_loss, dkd_terms, teacher_confidence_weights
from dve_perception.training.kd_losses import (
    CKALoss,
    FeatureRecalibration,
    PatchEmbeddingAlignment,
    linear_cka,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=torch.float64))
    return q


# --- linear CKA --------------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 8, generator=_gen(0), dtype=torch.float64)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_scaling_and_translation():
    x = torch.randn(60, 6, generator=_gen(1), dtype=torch.float64)
    y = x @ torch.randn(6, 4, generator=_gen(2), dtype=torch.float64) + 0.3 * torch.randn(
        60, 4, generator=_gen(3), dtype=torch.float64
    )
    base = linear_cka(x, y)
    assert linear_cka(x @ _orthogonal(6, 4), y).item() == pytest.approx(base.item(), abs=1e-10)
    assert linear_cka(x, y @ _orthogonal(4, 5)).item() == pytest.approx(base.item(), abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y).item() == pytest.approx(base.item(), abs=1e-10)
    assert linear_cka(x + 3.0, y - 2.0).item() == pytest.approx(base.item(), abs=1e-10)


def test_cka_is_not_invariant_to_general_invertible_linear_maps():
    x = torch.randn(200, 5, generator=_gen(6), dtype=torch.float64)
    stretch = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 30.0], dtype=torch.float64))
    # X A carries exactly the information of X (A is invertible) but CKA drops well below 1.
    assert linear_cka(x, x @ stretch).item() < 0.5


def test_cka_lies_in_the_unit_interval_and_is_symmetric():
    for seed in range(5):
        x = torch.randn(30, 3 + seed, generator=_gen(10 + seed))
        y = torch.randn(30, 7, generator=_gen(20 + seed))
        value = linear_cka(x, y).item()
        assert 0.0 <= value <= 1.0
        assert linear_cka(y, x).item() == pytest.approx(value, rel=1e-5)


def test_cka_of_a_constant_representation_is_zero_not_nan():
    assert linear_cka(torch.ones(10, 3), torch.randn(10, 2)).item() == 0.0


def test_cka_rejects_mismatched_example_counts():
    with pytest.raises(InputError, match="same N >= 2"):
        linear_cka(torch.zeros(4, 2), torch.zeros(5, 2))


def test_cka_loss_is_zero_for_an_orthogonally_rotated_teacher_and_subsamples_reproducibly():
    x = torch.randn(2, 4, 20, 20, generator=_gen(30))
    rotated = torch.einsum("bchw,cd->bdhw", x, _orthogonal(4, 31).float())
    loss = CKALoss(max_tokens=300, seed=3)
    assert loss(x, rotated).item() == pytest.approx(0.0, abs=1e-5)
    a, b = CKALoss(max_tokens=50, seed=9), CKALoss(max_tokens=50, seed=9)
    t = torch.randn(2, 3, 20, 20, generator=_gen(32))
    assert a(x, t).item() == b(x, t).item()


def test_cka_loss_trains_the_recalibration_towards_the_teacher():
    torch.manual_seed(0)
    student = torch.randn(256, 6, generator=_gen(40))
    mix = torch.randn(6, 6, generator=_gen(41)) + 3 * torch.eye(6)
    teacher = (student @ mix) * torch.tensor([1.0, 1, 1, 1, 1, 20.0])  # not a rotation
    loss = CKALoss(FeatureRecalibration(6, 6), max_tokens=256)
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    first = loss(student, teacher).item()
    for _ in range(100):
        opt.zero_grad()
        value = loss(student, teacher)
        value.backward()
        opt.step()
    assert value.item() < first / 4


def test_cka_loss_rejects_maps_of_different_size():
    with pytest.raises(InputError, match="differ in size"):
        CKALoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 8, 8))


# --- TransKD patch-embedding alignment -----------------------------------------------------------


def test_pea_is_the_alpha_weighted_mse_of_the_linear_projections():
    pea = PatchEmbeddingAlignment([2, 3, 4, 5], [4, 6, 8, 10])
    student = [torch.randn(2, 16, c, generator=_gen(50 + c)) for c in (2, 3, 4, 5)]
    teacher = [torch.randn(2, 16, c, generator=_gen(60 + c)) for c in (4, 6, 8, 10)]
    expected = sum(
        a * ((proj(s) - t) ** 2).mean()
        for a, proj, s, t in zip(
            (0.1, 0.1, 0.5, 1.0), pea.projections, student, teacher, strict=True
        )
    )
    assert torch.allclose(pea(student, teacher), expected, atol=1e-6)


def test_pea_is_zero_when_the_projection_reproduces_the_teacher():
    pea = PatchEmbeddingAlignment([3], [3], weights=[1.0])
    with torch.no_grad():
        pea.projections[0].weight.copy_(torch.eye(3))
        pea.projections[0].bias.zero_()
    x = torch.randn(1, 3, 4, 4)
    assert pea([x], [x]).item() == pytest.approx(0.0, abs=1e-12)


def test_pea_resizes_the_student_grid_to_the_teacher_grid():
    pea = PatchEmbeddingAlignment([2], [2], weights=[1.0])
    with torch.no_grad():
        pea.projections[0].weight.copy_(torch.eye(2))
        pea.projections[0].bias.zero_()
    constant = torch.ones(1, 2, 2, 2)  # bilinear upsampling of a constant is that constant
    assert pea([constant], [torch.ones(1, 2, 8, 8)]).item() == pytest.approx(0.0, abs=1e-12)
    tokens = torch.ones(1, 6, 2)  # a 2x3 grid needs its grid passed explicitly
    with pytest.raises(InputError, match="not a square grid"):
        pea([tokens], [torch.ones(1, 2, 4, 6)])
    got = pea([tokens], [torch.ones(1, 2, 4, 6)], student_grids=[(2, 3)])
    assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_pea_rejects_wrong_stage_counts_and_widths():
    pea = PatchEmbeddingAlignment([2, 2, 2, 2], [3, 3, 3, 3])
    with pytest.raises(InputError, match="expected 4 stages"):
        pea([torch.zeros(1, 4, 2)], [torch.zeros(1, 4, 3)])
    with pytest.raises(InputError, match="stage 0: expected 2 student"):
        pea([torch.zeros(1, 4, 5)] * 4, [torch.zeros(1, 4, 3)] * 4)
    with pytest.raises(InputError, match="one student dim"):
        PatchEmbeddingAlignment([2], [3, 3])


# --- DKD ------------------------------------------------------------------------------------------


def _logits(seed, shape=(6, 5)):
    return torch.randn(*shape, generator=_gen(seed)) * 2.0


def test_tckd_and_nckd_decompose_classical_kd():
    s, t, y = _logits(70), _logits(71), torch.tensor([0, 1, 2, 3, 4, 0])
    temp = 2.0
    kd = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none").sum(1)
    tckd, nckd, p_t = dkd_terms(s, t, y, temperature=temp)
    assert torch.allclose(p_t, F.softmax(t / temp, 1)[torch.arange(6), y])
    assert torch.allclose(kd, tckd + (1 - p_t) * nckd, atol=1e-6)


def test_dkd_matches_the_paper_formula_with_alpha_beta_and_temperature():
    s, t, y = _logits(72), _logits(73), torch.tensor([4, 3, 2, 1, 0, 1])
    tckd, nckd, _ = dkd_terms(s, t, y, temperature=4.0)
    expected = (1.0 * tckd.mean() + 8.0 * nckd.mean()) * 16.0
    assert torch.allclose(dkd_loss(s, t, y), expected)
    # TCKD by hand for the first row: KL of the binary (p_t, 1 - p_t) distributions.
    ps, pt = F.softmax(s[0] / 4, 0)[4], F.softmax(t[0] / 4, 0)[4]
    by_hand = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    assert torch.allclose(tckd[0], by_hand, atol=1e-6)


def test_dkd_is_zero_when_student_equals_teacher():
    t, y = _logits(74), torch.tensor([0, 1, 2, 3, 4, 0])
    assert dkd_loss(t.clone(), t, y).item() == pytest.approx(0.0, abs=1e-6)


def test_all_ones_weights_equal_unweighted_dkd_in_every_shape():
    s, t = _logits(75, (2, 4, 3, 3)), _logits(76, (2, 4, 3, 3))
    y = torch.randint(0, 4, (2, 3, 3), generator=_gen(77))
    plain = dkd_loss(s, t, y)
    for w in (torch.ones(4), torch.ones(2, 4), torch.ones(2, 4, 3, 3)):
        assert torch.allclose(dkd_loss(s, t, y, weights=w), plain)


def test_weights_scale_each_non_target_kl_term():
    s, t, y = _logits(78, (1, 4)), _logits(79, (1, 4)), torch.tensor([0])
    w = torch.tensor([2.0, 0.0, 1.0, 3.0])
    tckd_w, nckd_w, _ = dkd_terms(s, t, y, temperature=1.0, weights=w)
    tckd, _, _ = dkd_terms(s, t, y, temperature=1.0)
    ps, pt = F.softmax(s[0, 1:], 0), F.softmax(t[0, 1:], 0)
    # Weighted summands are generalised KL terms, p log(p/q) - p + q, each non-negative.
    by_hand = (w[1:] * (pt * torch.log(pt / ps) - pt + ps)).sum()
    assert torch.allclose(nckd_w[0], by_hand, atol=1e-6)
    assert torch.allclose(tckd_w, 2.0 * tckd, atol=1e-6)


def test_weighted_dkd_stays_a_divergence_for_any_non_negative_weights():
    # With plain p log(p/q) summands a non-uniform weighting can go below 0, rewarding a
    # student sharper than the teacher; the generalised summands cannot.
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        s = torch.randn(16, 6, generator=gen) * 3
        t = torch.randn(16, 6, generator=gen) * 3
        y = torch.randint(0, 6, (16,), generator=gen)
        w = torch.rand(16, 6, generator=gen) * 4
        tckd, nckd, _ = dkd_terms(s, t, y, temperature=2.0, weights=w)
        assert (tckd >= -1e-6).all() and (nckd >= -1e-6).all()
    same = dkd_terms(t, t, y, temperature=2.0, weights=w)
    assert same[0].abs().max() < 1e-6 and same[1].abs().max() < 1e-6


def test_ignored_pixels_are_dropped_and_an_all_void_batch_gives_zero():
    s, t = _logits(80, (1, 3, 2, 2)), _logits(81, (1, 3, 2, 2))
    y = torch.tensor([[[0, 255], [1, 2]]])
    tckd, _, _ = dkd_terms(s, t, y)
    assert tckd.shape == (3,)
    s.requires_grad_(True)
    loss = dkd_loss(s, t, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_gradients_stay_finite_for_a_saturated_teacher():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.tensor([[200.0, 0, 0, 0]] * 3)  # p_t == 1 exactly in float32
    dkd_loss(s, t, torch.zeros(3, dtype=torch.long), temperature=1.0).backward()
    assert torch.isfinite(s.grad).all()


def test_teacher_confidence_weights_have_mean_one_over_non_targets():
    t, y = _logits(82), torch.tensor([0, 1, 2, 3, 4, 255])
    w = teacher_confidence_weights(t, y)
    rows = torch.arange(5)
    assert torch.equal(w[rows, y[:5]], torch.ones(5))
    non_target = w[:5].sum(1) - 1.0
    assert torch.allclose(non_target / 4, torch.ones(5), atol=1e-6)
    assert torch.equal(w[5], torch.ones(5))  # ignored rows are neutral


def test_dkd_rejects_bad_targets_weights_and_temperature():
    s, t = _logits(83, (2, 3)), _logits(84, (2, 3))
    with pytest.raises(InputError, match="target classes must be in"):
        dkd_loss(s, t, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="weights must be"):
        dkd_loss(s, t, torch.tensor([0, 1]), weights=torch.ones(4))
    with pytest.raises(InputError, match="finite and non-negative"):
        dkd_loss(s, t, torch.tensor([0, 1]), weights=-torch.ones(3))
    with pytest.raises(InputError, match="temperature must be positive"):
        dkd_loss(s, t, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(InputError, match="share a"):
        dkd_loss(s, t[:, :2], torch.tensor([0, 1]))
