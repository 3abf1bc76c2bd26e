"""Tests of mbls_nlp.losses against hand-computed numbers, float64 references and torch's own cross-entropy."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from mbls_nlp import losses as L
from mbls_nlp.losses import LOSS_NAMES, CalibrationLoss, MarginLoss, build_loss

LN2, LN4, LN6, LN1_5 = math.log(2), math.log(4), math.log(6), math.log(1.5)


# ---------------------------------------------------------------------------------------------------------------
# Straightforward float64 references, written from the formulas (and the reference code's averaging), one row per
# valid position. They share nothing with the implementation beyond torch primitives.
# ---------------------------------------------------------------------------------------------------------------
def ref_rows(name, z, y, stable=False, **kw):
    # stable=True takes log p from a log-softmax, for logits so spread (e.g. 1e4) that some p underflow to 0
    p = torch.softmax(z, dim=1)
    logp = torch.log_softmax(z, dim=1) if stable else torch.log(p)
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    ce = -(onehot * logp).sum(1)
    if name == "ce":
        return ce
    if name == "ls":
        eps = kw.get("epsilon", 0.05)
        target = (1 - eps) * onehot + eps / z.shape[1]
        return -(target * logp).sum(1)
    if name in ("focal", "flsd"):
        p_y = (onehot * p).sum(1)
        if name == "focal":
            gamma = kw.get("gamma", 3.0)
        else:
            gamma = torch.where(p_y.detach() < 0.2, 5.0, 3.0).to(z.dtype)
        return -((1 - p_y) ** gamma) * (onehot * logp).sum(1)
    if name == "ecp":
        return ce - kw.get("beta", 0.1) * (-(p * logp)).mean(1)
    if name == "brier":
        return ((p - onehot) ** 2).sum(1)
    if name == "mmce":
        r, pred = p.max(1)
        a = (pred == y).to(z.dtype) - r
        k = torch.exp(-(r[:, None] - r[None, :]).abs() / 0.4)  # the reference's n x n kernel matrix
        n = z.shape[0]
        return ce + kw.get("weight", 1.0) * a * (k * a[None, :]).sum(1) / n
    if name == "mbls":
        margin, alpha = kw.get("margin", 10.0), kw.get("alpha", 0.1)
        mx = z.gather(1, z.argmax(1, keepdim=True)).squeeze(1)  # tie rule: the max's grad goes to the first max
        return ce + alpha * F.relu((mx[:, None] - margin) - z).mean(1)
    if name == "acls":
        margin, alpha = kw.get("margin", 10.0), kw.get("alpha", 0.1)
        pos_lambda, neg_lambda = kw.get("pos_lambda", 1.0), kw.get("neg_lambda", 0.1)
        mx = z.max(dim=1).values[:, None]  # the reference's inputs.max(dim=1): the max's grad goes to its index
        indicator = (z.detach() == mx.detach()).to(z.dtype)
        pos = (indicator * F.relu(mx - margin) ** 2).sum(1)
        neg = ((1 - indicator) * F.relu(mx.detach() - z - margin) ** 2).sum(1) / (z.shape[1] - 1)
        return ce + alpha * (pos_lambda * pos + neg_lambda * neg)
    if name == "dfl":
        gamma = kw.get("gamma", 3.0)
        p_y = (onehot * p).sum(1)
        below = (p < p_y[:, None]).to(z.dtype)  # the reference's torch.lt(softmax, p_k) mask, then topk(mask * p, 1)
        p_j = (below * p).max(dim=1).values
        return -((1 - p_y + p_j) ** gamma) * (onehot * logp).sum(1)
    if name == "cals":
        margin = kw.get("margin", 20.0)
        lambd = torch.full((z.shape[1],), kw.get("lambda_min", 1e-6), dtype=z.dtype)
        rho = torch.full((z.shape[1],), kw.get("rho_min", 1.0), dtype=z.dtype)
        h = (z.amax(dim=1, keepdim=True) - z - margin) / margin  # the reference's get_constraints (normalize=True)
        x = lambd + rho * h  # the reference's phr penalty
        penalty = torch.where(x >= 0, (x**2 - lambd**2) / (2 * rho), -(lambd**2) / (2 * rho))
        return ce + penalty.mean(1)
    raise AssertionError(name)


def ref_mean(name, z, y, stable=False, **kw):
    return ref_rows(name, z, y, stable=stable, **kw).mean()


def random_logits(n, c, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype) * scale, torch.randint(0, c, (n,), generator=g)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed 2x3 example:
#   row 1: z = [ln 2, 0, 0], y = 0 -> exp z = [2, 1, 1], p = [1/2, 1/4, 1/4], p_y = 1/2, argmax 0 (correct)
#   row 2: z = [ln 4, 0, 0], y = 1 -> exp z = [4, 1, 1], p = [2/3, 1/6, 1/6], p_y = 1/6, argmax 0 (wrong)
# ---------------------------------------------------------------------------------------------------------------
HAND_Z = torch.tensor([[LN2, 0.0, 0.0], [LN4, 0.0, 0.0]], dtype=torch.float64)
HAND_Y = torch.tensor([0, 1])
HAND = {
    # CE: -log(1/2) = ln 2 and -log(1/6) = ln 6, averaged.
    "ce": ({}, (LN2 + LN6) / 2),
    # LS eps=0.1: 0.9 * ce + 0.1 * mean_k(-log p_k); row 1 mean_k = (ln 2 + ln 4 + ln 4) / 3 = 5 ln 2 / 3,
    # row 2 mean_k = (ln 1.5 + ln 6 + ln 6) / 3.
    "ls": ({"epsilon": 0.1}, (0.9 * LN2 + 0.1 * 5 * LN2 / 3 + 0.9 * LN6 + 0.1 * (LN1_5 + 2 * LN6) / 3) / 2),
    # Focal gamma=2: (1 - 1/2)^2 ln 2 = ln 2 / 4 and (1 - 1/6)^2 ln 6 = 25/36 ln 6.
    "focal": ({"gamma": 2.0}, (LN2 / 4 + 25 / 36 * LN6) / 2),
    # FLSD-53: row 1 p_y = 1/2 >= 0.2 -> gamma 3: (1/2)^3 ln 2; row 2 p_y = 1/6 < 0.2 -> gamma 5: (5/6)^5 ln 6.
    "flsd": ({}, (LN2 / 8 + (5 / 6) ** 5 * LN6) / 2),
    # ECP beta=0.1: ce - 0.1 * (entropy / 3); row 1 entropy = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2,
    # row 2 entropy = 2/3 ln 1.5 + 2 * 1/6 ln 6.
    "ecp": ({"beta": 0.1}, (LN2 - 0.1 * 1.5 * LN2 / 3 + LN6 - 0.1 * (2 / 3 * LN1_5 + LN6 / 3) / 3) / 2),
    # Brier: row 1 (1/2 - 1)^2 + 2 (1/4)^2 = 3/8; row 2 (2/3)^2 + (1/6 - 1)^2 + (1/6)^2 = 16/36 + 25/36 + 1/36 = 7/6.
    "brier": ({}, (3 / 8 + 7 / 6) / 2),
    # MMCE weight=1: r = [1/2, 2/3], c = [1, 0], a = c - r = [1/2, -2/3], k12 = exp(-(2/3 - 1/2) / 0.4) = exp(-5/12);
    # T = (a1^2 + a2^2 + 2 a1 a2 k12) / 2^2 = (1/4 + 4/9 - 2/3 exp(-5/12)) / 4.
    "mmce": ({}, (LN2 + LN6) / 2 + (1 / 4 + 4 / 9 - 2 / 3 * math.exp(-5 / 12)) / 4),
    # MbLS margin=0.5, alpha=0.5: max - z = [0, ln 2, ln 2] and [0, ln 4, ln 4]; relu(d - 0.5) sums to
    # 2 (ln 2 - 0.5) and 2 (ln 4 - 0.5); mean over 2 x 3 entries = (6 ln 2 - 2) / 6 = (3 ln 2 - 1) / 3.
    "mbls": ({"margin": 0.5, "alpha": 0.5}, (LN2 + LN6) / 2 + 0.5 * (3 * LN2 - 1) / 3),
    # ACLS margin=0.5, alpha=0.5 (pos_lambda 1, neg_lambda 0.1): row maxima ln 2 and ln 4 (no ties), so
    # pos = (ln 2 - 0.5)^2 and (ln 4 - 0.5)^2; the two other logits (0) are at distance max - 0 from the max, so
    # neg = 2 (max - 0.5)^2 / (C - 1 = 2) = pos; mean = CE + 0.5 * (1 + 0.1) * ((ln 2 - .5)^2 + (ln 4 - .5)^2) / 2.
    "acls": (
        {"margin": 0.5, "alpha": 0.5},
        (LN2 + LN6) / 2 + 0.5 * 1.1 * ((LN2 - 0.5) ** 2 + (LN4 - 0.5) ** 2) / 2,
    ),
    # DFL gamma=2: row 1 p_y = 1/2, largest p strictly below it p_j = 1/4: (1 - 1/2 + 1/4)^2 ln 2 = 9/16 ln 2;
    # row 2 p_y = 1/6, no p strictly below (the other 1/6 ties, 2/3 is above): p_j = 0, (5/6)^2 ln 6.
    "dfl": ({"gamma": 2.0}, (9 / 16 * LN2 + 25 / 36 * LN6) / 2),
    # CALS margin=0.5, lambda=0.5, rho=1: h = (max - z - 0.5) / 0.5 = [-1, 2 ln 2 - 1, 2 ln 2 - 1] and
    # [-1, 4 ln 2 - 1, 4 ln 2 - 1]; x = 0.5 + h; x < 0 at the maxima: P = -0.5^2 / 2 = -0.125; elsewhere
    # P = (x^2 - 0.25) / 2. Mean over 6 entries: ((2 ln 2 - .5)^2 + (4 ln 2 - .5)^2 - 0.75) / 6.
    "cals": (
        {"margin": 0.5, "lambda_min": 0.5, "rho_min": 1.0},
        (LN2 + LN6) / 2 + ((2 * LN2 - 0.5) ** 2 + (4 * LN2 - 0.5) ** 2 - 0.75) / 6,
    ),
}


def test_loss_names_cover_build_loss():
    assert set(HAND) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        loss = build_loss(name)
        assert isinstance(loss, CalibrationLoss)
        assert loss.part_names and set(loss.part_weights) == set(loss.part_names)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_hand_computed_2x3(name):
    kwargs, expected = HAND[name]
    loss = build_loss(name, **kwargs)(HAND_Z, HAND_Y)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert ref_mean(name, HAND_Z, HAND_Y, **kwargs).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_equals_float64_reference_value_and_grad(name):
    z, y = random_logits(50, 7, seed=1)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = build_loss(name)(z1, y)
    ref = ref_mean(name, z2, y)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck_float64(name, reduction):
    z, y = random_logits(6, 4, seed=2)  # random: no ties in the max, p_y away from FLSD's 0.2 switch
    y[2] = -100
    # Margins small enough for the penalties to be active. ACLS's gradient of the other-classes term treats the max as
    # a constant (the reference detaches it), so it is not the derivative of the value gradcheck differentiates
    # numerically: checked here with neg_lambda = 0, and against autograd through the detached formula elsewhere.
    kwargs = {"mbls": {"margin": 1.0}, "acls": {"margin": 1.0, "neg_lambda": 0.0}, "cals": {"margin": 1.0}}
    loss = build_loss(name, reduction=reduction, **kwargs.get(name, {}))
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z.requires_grad_(),))


def test_special_cases_equal_cross_entropy():
    z, y = random_logits(40, 9, seed=3)
    ce = F.cross_entropy(z, y)
    for loss in (
        MarginLoss(margin=math.inf),
        MarginLoss(alpha=0.0),
        build_loss("ls", epsilon=0.0),
        build_loss("focal", gamma=0.0),
        build_loss("ecp", beta=0.0),
        build_loss("mmce", weight=0.0),
        build_loss("acls", pos_lambda=0.0, neg_lambda=0.0, margin=0.0),
        build_loss("acls", alpha=0.0, margin=0.0),
        build_loss("dfl", gamma=0.0),
        build_loss("cals", lambda_min=0.0, rho_min=0.0, rho_max=0.0, margin=0.5),  # zero multipliers, rho 0
        build_loss("ce"),
    ):
        torch.testing.assert_close(loss(z, y), ce, rtol=1e-12, atol=1e-12)
    # A huge finite margin: no logit distance exceeds it, so the penalty vanishes too.
    torch.testing.assert_close(MarginLoss(margin=1e6, alpha=5.0)(z, y), ce, rtol=1e-12, atol=1e-12)


def test_label_smoothing_equals_torch_label_smoothing():
    # The reference's (1 - eps) * nll + eps * mean_k(-log p_k) is torch's target (1 - eps) * onehot + eps / C.
    z, y = random_logits(30, 5, seed=4)
    y[::4] = -100
    for eps in (0.05, 0.3, 0.9):
        expected = F.cross_entropy(z, y, label_smoothing=eps)
        torch.testing.assert_close(build_loss("ls", epsilon=eps)(z, y), expected, rtol=1e-12, atol=1e-12)


def test_focal_against_independent_formula():
    # Direct formula -(1 - p)^gamma log p from the softmax, gamma non-integer.
    z, y = random_logits(30, 5, seed=5)
    p_y = torch.softmax(z, 1)[torch.arange(30), y]
    expected = (-((1 - p_y) ** 2.5) * torch.log(p_y)).mean()
    torch.testing.assert_close(build_loss("focal", gamma=2.5)(z, y), expected, rtol=1e-12, atol=1e-12)


def test_flsd_switches_gamma_at_0_2():
    # Two classes: p_y = sigmoid(z_y - z_other). Just below / above 0.2.
    for p, gamma in ((0.19, 5.0), (0.21, 3.0)):
        z = torch.tensor([[math.log(p / (1 - p)), 0.0]], dtype=torch.float64)
        expected = -((1 - p) ** gamma) * math.log(p)
        assert build_loss("flsd")(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-10)


def test_mmce_sorted_sum_equals_pairwise_matrix_with_ties():
    # Repeated rows give equal confidences (ties in the sort); the O(n log n) sum must equal the n x n matrix.
    z, y = random_logits(64, 6, seed=6)
    z[10:20] = z[0]
    y[10:20] = y[0]
    loss = build_loss("mmce", reduction="none")
    torch.testing.assert_close(loss(z, y), ref_rows("mmce", z, y), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The fused MbLS kernel against autograd through the straightforward formula.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("margin", [0.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mbls_fused_equals_autograd_reference(margin, reduction, monkeypatch):
    # Tiny blocks so that the row-block loop runs many times, with a ragged last block (37 rows, 5 per block).
    monkeypatch.setattr(L, "_BLOCK_ELEMENTS", 5 * 7)
    z, y = random_logits(37, 7, seed=7)
    y[[3, 11, 30]] = -100
    upstream = torch.rand(37, dtype=torch.float64) - 0.5  # arbitrary (also negative) upstream gradient for "none"
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = MarginLoss(margin=margin, alpha=0.7, reduction=reduction)(z1, y)
    valid = y != -100
    rows = ref_rows("mbls", z2[valid], y[valid], margin=margin, alpha=0.7)
    if reduction == "none":
        ref = torch.zeros(37, dtype=torch.float64).masked_scatter(valid, rows)
        (ours * upstream).sum().backward()
        (ref * upstream).sum().backward()
    else:
        ref = rows.mean() if reduction == "mean" else rows.sum()
        ours.backward()
        ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-14)
    assert (z1.grad[~valid] == 0).all()


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_mbls_ties_in_the_max(margin):
    # Rows with two, three or four equal maxima. Tie rule: the max's gradient goes to the first maximal index
    # (torch.argmax), the same as autograd through the gather in the reference above.
    z = torch.tensor(
        [[2.0, 2.0, 0.0, -1.0], [1.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0], [5.0, -2.0, 5.0, 1.0]], dtype=torch.float64
    )
    y = torch.tensor([2, 0, 1, 3])
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    MarginLoss(margin=margin, alpha=2.0, reduction="sum")(z1, y).backward()
    ref_rows("mbls", z2, y, margin=margin, alpha=2.0).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=0, atol=1e-14)
    # Hand check of row 0 with margin 0: p = [e^2, e^2, 1, e^-1] / S; penalty entries relu(2 - z_k) = [0, 0, 2, 3]
    # (the tied maxima have relu(0) = 0 and relu'(0) = 0), count 2 goes to the first maximum -> margin grad
    # alpha/C * [2, 0, -1, -1] with alpha/C = 2/4.
    if margin == 0.0:
        e = torch.exp(z[0])
        expected = e / e.sum() - torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
        expected += 2.0 / 4 * torch.tensor([2.0, 0.0, -1.0, -1.0], dtype=torch.float64)
        torch.testing.assert_close(z1.grad[0], expected, rtol=0, atol=1e-14)


def test_mbls_float32_large_block_path_matches_float64():
    z, y = random_logits(3000, 200, dtype=torch.float32, scale=8.0, seed=8)  # 600k elements: several blocks
    z1 = z.clone().requires_grad_()
    z2 = z.double().requires_grad_()
    MarginLoss(margin=6.0, alpha=0.3)(z1, y).backward()
    ref_mean("mbls", z2, y, margin=6.0, alpha=0.3).backward()
    torch.testing.assert_close(z1.grad.double(), z2.grad, rtol=1e-4, atol=1e-8)


def test_mbls_ignores_negative_ignore_index_in_every_term():
    # The reference filters ignored positions only for ignore_index >= 0; a -100 row with huge logit gaps would
    # otherwise add to the margin term. Here its penalty would be enormous.
    z, y = random_logits(5, 4, seed=9)
    z_bad = torch.cat([z, torch.tensor([[1000.0, -1000.0, 0.0, 0.0]], dtype=torch.float64)])
    y_bad = torch.cat([y, torch.tensor([-100])])
    loss = MarginLoss(margin=1.0, alpha=1.0)
    torch.testing.assert_close(loss(z_bad, y_bad), loss(z, y), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Shapes, ignore_index and reductions, for every loss.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 5, 4, 3)])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_dense_inputs_equal_flattened_valid_rows(name, shape):
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.3] = -100
    flat_z = logits.movedim(1, -1).reshape(-1, shape[1])
    flat_y = labels.reshape(-1)
    valid = flat_y != -100
    expected = ref_rows(name, flat_z[valid], flat_y[valid])
    for reduction in ("mean", "sum", "none"):
        out = build_loss(name, reduction=reduction)(logits, labels)
        if reduction == "none":
            assert out.shape == labels.shape
            assert (out[labels == -100] == 0).all()
            torch.testing.assert_close(out[labels != -100], expected, rtol=1e-10, atol=1e-12)
        else:
            target = expected.mean() if reduction == "mean" else expected.sum()
            torch.testing.assert_close(out, target, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_sum_equals_mean_times_valid_and_parts(name, ignore_index):
    z, y = random_logits(20, 4, seed=11)
    y[[1, 5, 6, 17]] = ignore_index
    n_valid = int((y != ignore_index).sum())
    results = {}
    for reduction in ("mean", "sum", "none"):
        loss = build_loss(name, reduction=reduction, ignore_index=ignore_index)
        out = loss(z, y)
        parts = loss.last_parts
        assert set(parts) == set(loss.part_names)
        assert all(not p.requires_grad and p.shape == out.shape for p in parts.values())
        # loss == sum of weighted parts, with the parts reduced like the loss.
        weighted = sum(loss.part_weights[k] * parts[k] for k in loss.part_names)
        torch.testing.assert_close(weighted, out.detach(), rtol=1e-12, atol=1e-12)
        results[reduction] = out
    torch.testing.assert_close(results["sum"], results["mean"] * n_valid, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results["none"].sum(), results["sum"], rtol=1e-12, atol=1e-12)
    assert (results["none"][y == ignore_index] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_ignored_batch_is_zero_and_backpropagates(name, reduction):
    z = torch.randn(4, 3, 5, requires_grad=True)
    y = torch.full((4, 5), -100)
    loss = build_loss(name, reduction=reduction)
    out = loss(z, y)
    assert out.requires_grad
    assert out.shape == (() if reduction != "none" else (4, 5))
    assert (out == 0).all() and not out.isnan().any()
    out.sum().backward()
    assert z.grad is not None and (z.grad == 0).all()
    assert all((p == 0).all() for p in loss.last_parts.values())


def test_integer_label_dtypes_and_float32():
    z, y = random_logits(8, 4, dtype=torch.float32, seed=12)
    expected = F.cross_entropy(z, y)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(build_loss("ce")(z, y.to(dtype)), expected)


# ---------------------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "mbls", "margin": -1.0}, ValueError, "margin"),
        ({"name": "mbls", "margin": float("nan")}, ValueError, "margin"),
        ({"name": "mbls", "alpha": -0.1}, ValueError, "alpha"),
        ({"name": "mbls", "alpha": math.inf}, ValueError, "alpha"),
        ({"name": "mbls", "schedule": "cosine"}, ValueError, "schedule.*add"),
        ({"name": "mbls", "step_size": 0}, ValueError, "step_size"),
        ({"name": "mbls", "mu": -1.0}, ValueError, "mu"),
        ({"name": "ls", "epsilon": 1.0}, ValueError, r"epsilon.*\[0, 1\)"),
        ({"name": "ls", "epsilon": -0.1}, ValueError, "epsilon"),
        ({"name": "focal", "gamma": -1.0}, ValueError, "gamma"),
        ({"name": "ecp", "beta": -1.0}, ValueError, "beta"),
        ({"name": "mmce", "weight": -1.0}, ValueError, "weight"),
        ({"name": "ce", "reduction": "avg"}, ValueError, "reduction.*mean.*sum.*none"),
        ({"name": "ce", "ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"name": "mbls", "margin": "10"}, TypeError, "margin"),
        ({"name": "focal", "gamma": None}, TypeError, "gamma"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        build_loss(kwargs.pop("name"), **kwargs)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="name") as info:
        build_loss("margin")
    assert all(n in str(info.value) for n in LOSS_NAMES)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_tensors(name):
    loss = build_loss(name)
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, -100])
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        zb = z.clone()
        zb[1, 2] = bad_value
        with pytest.raises(ValueError, match="logits.*finite"):
            loss(zb, y)
    for bad_label in (3, -1, 7):
        with pytest.raises(ValueError, match=r"labels.*\[0, 3\).*ignore_index"):
            loss(z, torch.tensor([0, bad_label, 2, 1]))
    with pytest.raises(ValueError, match="labels.*shape.*expected"):
        loss(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels.*shape"):
        loss(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits.*shape"):
        loss(torch.randn(4), y)
    with pytest.raises(TypeError, match="labels.*integer"):
        loss(z, y.float())
    with pytest.raises(TypeError, match="labels.*integer"):
        loss(z, y > 0)
    with pytest.raises(TypeError, match="logits.*floating"):
        loss(z.long(), y)


def test_finite_check_is_exact_when_the_sum_overflows():
    # Finite logits whose sum overflows float32 must not be reported as non-finite.
    z = torch.full((4, 3), 3e38)
    z[:, 1] = 0.0
    y = torch.tensor([0, 1, 2, 0])
    assert torch.isinf(z.sum())
    assert torch.isfinite(build_loss("ce")(z, y))


# ---------------------------------------------------------------------------------------------------------------
# Alpha schedule and its state.
# ---------------------------------------------------------------------------------------------------------------
def test_schedule_semantics():
    alphas = []
    for schedule, mu in (("", 5.0), ("add", 0.5), ("multiply", 3.0), ("step", 10.0)):
        loss = MarginLoss(alpha=1.0, schedule=schedule, mu=mu, max_alpha=20.0, step_size=2)
        seq = []
        for epoch in range(4):
            loss.schedule_alpha(epoch)
            seq.append(loss.alpha)
        alphas.append(seq)
    assert alphas[0] == [1.0, 1.0, 1.0, 1.0]  # "" never changes alpha
    assert alphas[1] == [1.5, 2.0, 2.5, 3.0]  # + 0.5 each epoch
    assert alphas[2] == [3.0, 9.0, 20.0, 20.0]  # * 3, capped at max_alpha = 20 (27 -> 20)
    assert alphas[3] == [1.0, 10.0, 10.0, 20.0]  # * 10 when (epoch + 1) % 2 == 0, i.e. after epochs 1 and 3; capped


def test_scheduled_alpha_is_used_in_forward():
    z, y = random_logits(10, 4, seed=13)
    loss = MarginLoss(margin=0.5, alpha=1.0, schedule="add", mu=1.0)
    before = loss(z, y)
    loss.schedule_alpha(0)  # alpha 2
    after = loss(z, y)
    torch.testing.assert_close(after - before, loss.last_parts["margin"], rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_restores_alpha():
    loss = MarginLoss(alpha=0.1, schedule="multiply", mu=2.0)
    for epoch in range(3):
        loss.schedule_alpha(epoch)
    state = loss.state_dict()
    restored = MarginLoss(alpha=0.1, schedule="multiply", mu=2.0)
    assert restored.alpha == pytest.approx(0.1)
    restored.load_state_dict(state)
    assert restored.alpha == pytest.approx(0.8) and restored.alpha == loss.alpha
    # Survives torch.save/torch.load like a trainer checkpoint, and the schedule continues from the restored alpha.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    again = MarginLoss(alpha=0.1, schedule="multiply", mu=2.0)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    again.schedule_alpha(3)
    assert again.alpha == pytest.approx(1.6)


def test_state_dict_rejects_bad_alpha():
    loss = MarginLoss()
    with pytest.raises(ValueError, match="alpha"):
        loss.load_state_dict({"_extra_state": {"alpha": -1.0}})


# ---------------------------------------------------------------------------------------------------------------
# margin_optimum: where MbLS leaves one fitted example's logits (the study's "margins 2 and 4 end alike").
# ---------------------------------------------------------------------------------------------------------------
def _symmetric_logits(gap, k):
    # label 0 at 0, every other class at -gap: the point margin_optimum names
    return torch.cat([torch.zeros(1), torch.full((k - 1,), -gap)]).to(torch.float64)[None]


def _largest_drop(loss_fn, z, generator, steps=(1e-2, 1e-3)):
    """How far MarginLoss falls below its value at z along 400 random and the two symmetric directions (<= 0 at a
    minimum, up to rounding)."""
    y = torch.tensor([0])
    base = loss_fn(z, y).item()
    k = z.shape[1]
    directions = torch.randn(400, k, generator=generator, dtype=torch.float64)
    spread = torch.cat([torch.zeros(1), torch.ones(k - 1)]).to(torch.float64)  # all distances shrink together
    directions = torch.cat([directions, spread[None], -spread[None]])
    directions /= directions.norm(dim=1, keepdim=True)
    drops = [base - loss_fn(z + eps * v[None], y).item() for eps in steps for v in directions]
    return max(drops)


@pytest.mark.parametrize(
    "k, margin, alpha",
    [(20, 10.0, 0.1), (20, 2.0, 0.1), (20, 4.0, 0.1), (20, 0.0, 0.1), (20, 2.0, 0.5), (5, 1.5, 1.0), (3, 0.5, 2.0)],
)
def test_margin_optimum_is_the_minimum_of_the_loss(k, margin, alpha):
    # MbLS on one example is convex in its logits, so a point no direction descends from is the minimum. The balance
    # point by hand (k=20, alpha=0.1): CE's push on each other logit e^-d / (1 + 19 e^-d) equals the pull 0.1 / 20
    # when e^-d = 0.005 / (1 - 19 * 0.005) = 1 / 181, d = ln 181 = 5.1985; margins 2, 4, 0 end there, margin 10 at 10.
    # (5, 1.5, 1.0) and (3, 0.5, 2.0): alpha >= 1 pulls at least as hard as CE ever pushes, so the margin is the cap.
    loss_fn = MarginLoss(margin=margin, alpha=alpha)
    optimum = L.margin_optimum(margin, alpha, k)
    by_hand = {0.1: max(margin, math.log(181.0)), 0.5: math.log(21.0)}  # 0.5: ln(20 / 0.5 - 19), margin 2 below it
    expected_gap = by_hand.get(alpha, margin)
    assert optimum.gap == pytest.approx(expected_gap, rel=1e-12)
    assert optimum.confidence == pytest.approx(1 / (1 + (k - 1) * math.exp(-expected_gap)), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    assert _largest_drop(loss_fn, _symmetric_logits(optimum.gap, k), g) <= 1e-12
    # the check can fail: 0.05 away from the optimum (here: the first-order approximation ln(K / alpha)) it descends
    for wrong in (optimum.gap + 0.05, optimum.gap - 0.05, math.log(k / alpha)):
        if abs(wrong - optimum.gap) > 1e-3 and wrong > 0:
            assert _largest_drop(loss_fn, _symmetric_logits(wrong, k), g) > 1e-7, wrong


@pytest.mark.parametrize("k, margin, alpha", [(20, 2.0, 0.1), (20, 0.0, 0.1), (20, 6.0, 0.1), (20, 2.0, 0.5)])
def test_free_logits_trained_with_mbls_end_at_margin_optimum(k, margin, alpha):
    # gradient-based training of one example's logits from a random start (L-BFGS, float64) with the fused kernel
    torch.manual_seed(0)
    z = torch.randn(1, k, dtype=torch.float64).requires_grad_()
    y = torch.tensor([0])
    loss_fn = MarginLoss(margin=margin, alpha=alpha)
    opt = torch.optim.LBFGS(
        [z], max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(z, y)
        loss.backward()
        return loss

    opt.step(closure)
    distances = (z[0, 0] - z[0, 1:]).detach()
    optimum = L.margin_optimum(margin, alpha, k)
    assert distances.min().item() == pytest.approx(optimum.gap, abs=1e-4)
    assert distances.max().item() == pytest.approx(optimum.gap, abs=1e-4)
    assert torch.softmax(z.detach(), 1)[0, 0].item() == pytest.approx(optimum.confidence, abs=1e-5)


def test_margin_optimum_of_cross_entropy_and_bad_arguments():
    assert L.margin_optimum(math.inf, 0.1, 20) == (math.inf, 1.0)
    assert L.margin_optimum(10.0, 0.0, 20) == (math.inf, 1.0)
    with pytest.raises(ValueError, match="num_classes"):
        L.margin_optimum(10.0, 0.1, 1)
    with pytest.raises(TypeError, match="num_classes"):
        L.margin_optimum(10.0, 0.1, 20.0)
    with pytest.raises(ValueError, match="margin"):
        L.margin_optimum(-1.0, 0.1, 20)
    with pytest.raises(ValueError, match="alpha"):
        L.margin_optimum(10.0, float("nan"), 20)


# ---------------------------------------------------------------------------------------------------------------
# The registry: one table of losses (issue 12).
# ---------------------------------------------------------------------------------------------------------------
def test_registry_is_the_one_list_of_losses():
    assert L.LOSS_NAMES == tuple(L.LOSS_REGISTRY) == (
        "ce", "ls", "focal", "flsd", "ecp", "mmce", "brier", "mbls", "acls", "dfl", "cals",
    )  # fmt: skip
    for name, spec in L.LOSS_REGISTRY.items():
        assert spec.name == name
        assert type(build_loss(name)) is spec.cls
        assert spec.cls.__name__ in L.__all__  # every registered class is public
        assert set(spec.search_grid) <= set(spec.hparams)


@pytest.mark.parametrize("name", [name for name, spec in L.LOSS_REGISTRY.items() if spec.search_grid])
def test_every_default_grid_value_builds(name):
    spec = L.LOSS_REGISTRY[name]
    for config_field, values in spec.search_grid.items():
        keyword = spec.hparams[config_field]
        for value in values:
            assert getattr(build_loss(name, **{keyword: value}), keyword) == value


def test_spec_defaults_are_the_class_signature_defaults():
    # The paper defaults, written here by hand: the registry must read them from the class, not restate them.
    assert L.LOSS_REGISTRY["mbls"].defaults == {
        "margin": 10.0,
        "alpha": 0.1,
        "alpha_schedule": "",
        "alpha_mu": 0.0,
        "alpha_max": 100.0,
        "alpha_step_size": 100,
    }
    assert L.LOSS_REGISTRY["ls"].defaults == {"ls_epsilon": 0.05}
    assert L.LOSS_REGISTRY["focal"].searchable == {"focal_gamma": "gamma"}
    assert L.LOSS_REGISTRY["mbls"].searchable == {"margin": "margin", "alpha": "alpha"}
    assert L.LOSS_REGISTRY["ce"].defaults == {} and L.LOSS_REGISTRY["ce"].searchable == {}


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("Focal", L.FocalLoss), ValueError, "`name` must be a short lowercase word"),
        (("focal", torch.nn.CrossEntropyLoss), TypeError, "`cls` must be a subclass of CalibrationLoss"),
        (("focal", L.FocalLoss, {"focal_gamma": "gama"}), ValueError, r"'gama'.*allowed: \['gamma'\]"),
        (("focal", L.FocalLoss, {"loss_ignore_index": "ignore_index"}), ValueError, "not a keyword"),
        (("focal", L.FocalLoss, {}, {"focal_gamma": (1.0,)}), ValueError, "not in `hparams`"),
        (("focal", L.FocalLoss, {"focal_gamma": "gamma"}, {"focal_gamma": ()}), ValueError, "distinct values"),
        (("focal", L.FocalLoss, {"focal_gamma": "gamma"}, {"focal_gamma": (1, 1.0)}), ValueError, "distinct"),
    ],
)
def test_bad_registry_entries_are_rejected(args, error, match):
    with pytest.raises(error, match=match):
        L.LossSpec(*args)


def test_registry_entries_are_read_only_and_names_unique():
    spec = L.LOSS_REGISTRY["mbls"]
    with pytest.raises(TypeError):
        spec.search_grid["margin"] = (1.0,)
    with pytest.raises(AttributeError):
        spec.name = "other"
    with pytest.raises(ValueError, match=r"repeated: \['ce'\]"):
        L._registry(L.LossSpec("ce", L.CrossEntropyLoss), L.LossSpec("ce", L.BrierLoss))


# Half precision (issue 14 item 5): every loss computes in float32, finite for any finite float16 input.
# ---------------------------------------------------------------------------------------------------------------
def _half_cases():
    g = torch.Generator().manual_seed(21)
    spread = torch.randn(64, 10, generator=g) * 1e4  # fp16 logits of a diverging run: the fp16 loss was inf
    extreme = torch.tensor([[65504.0, -65504.0, 0.0], [0.0, 65504.0, -65504.0], [-65504.0, 0.0, 65504.0]])
    return {
        "randn*1e4": (spread, torch.randint(0, 10, (64,), generator=g)),
        # the fp16 extremes: max - z = 131008 > 65504, p = 0 exactly; every label position once
        "+-65504": (extreme.repeat(3, 1), torch.arange(9) % 3),
    }


@pytest.mark.parametrize("case", ["randn*1e4", "+-65504"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_half_precision_is_finite_and_equals_float64_reference(name, dtype, case):
    z, y = _half_cases()[case]
    z_half = z.to(dtype).requires_grad_()
    z_ref = z_half.detach().double().requires_grad_()  # the same half values, in float64
    loss_fn = build_loss(name)
    ours = loss_fn(z_half, y)
    ref = ref_mean(name, z_ref, y, stable=True)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32 and torch.isfinite(ours)
    assert z_half.grad.dtype == dtype and torch.isfinite(z_half.grad).all()
    assert all(torch.isfinite(part).all() and part.dtype == torch.float32 for part in loss_fn.last_parts.values())
    # float32 arithmetic: relative 1e-6 of a loss up to ~1e4; the gradient is rounded to the half dtype (fp16 keeps
    # 11 bits, bf16 8 bits)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    rtol = 2e-3 if dtype == torch.float16 else 1e-2
    torch.testing.assert_close(z_half.grad.double(), z_ref.grad, rtol=rtol, atol=1e-5)


def test_mbls_fused_kernel_does_not_overflow_in_half_precision():
    # fp16 row [65504, -65504, 0] with margin 0: penalty = relu(0 - 0) + relu(131008) + relu(65504) = 196512, far
    # above fp16's 65504; per class 196512 / 3 = 65504.
    z = torch.tensor([[65504.0, -65504.0, 0.0]], dtype=torch.float16, requires_grad=True)
    loss_fn = MarginLoss(margin=0.0, alpha=1.0)
    loss = loss_fn(z, torch.tensor([0]))
    assert loss_fn.last_parts["margin"].item() == pytest.approx(196512.0 / 3, rel=1e-6)
    loss.backward()
    # d/dz: ce part softmax - onehot = [0, 0, 0]; penalty part (count * onehot(argmax) - mask) / 3 = [2, -1, -1] / 3
    torch.testing.assert_close(z.grad.float(), torch.tensor([[2.0, -1.0, -1.0]]) / 3, rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_under_cpu_autocast_bfloat16(name):
    g = torch.Generator().manual_seed(22)
    layer = torch.nn.Linear(16, 6)
    x = torch.randn(32, 16, generator=g) * 30
    y = torch.randint(0, 6, (32,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        logits.retain_grad()
        loss = build_loss(name)(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    z_ref = logits.detach().double().requires_grad_()
    ref = ref_mean(name, z_ref, y, stable=True)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), z_ref.grad, rtol=1e-2, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# MbLS double backward (issue 14 item 7): the fused kernel's gradient stays differentiable under create_graph.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mbls_gradgradcheck_float64(reduction):
    z, y = random_logits(6, 4, seed=23)  # random: no ties, no logit within the finite-difference step of a kink
    y[3] = -100
    loss = MarginLoss(margin=1.0, alpha=0.7, reduction=reduction)
    assert torch.autograd.gradgradcheck(lambda t: loss(t, y), (z.requires_grad_(),))


def test_mbls_gradient_penalty_equals_autograd_formula():
    z, y = random_logits(20, 5, seed=24)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    (g1,) = torch.autograd.grad(MarginLoss(margin=1.0, alpha=0.5)(z1, y), z1, create_graph=True)
    (g2,) = torch.autograd.grad(ref_mean("mbls", z2, y, margin=1.0, alpha=0.5), z2, create_graph=True)
    assert g1.requires_grad  # was silently False: the penalty below was a constant
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)
    (g1.square().sum() + z1.square().sum()).backward()
    (g2.square().sum() + z2.square().sum()).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-13)
    # without create_graph the fast path runs and its gradient equals the autograd one
    z3 = z.clone().requires_grad_()
    MarginLoss(margin=1.0, alpha=0.5)(z3, y).backward()
    assert not z3.grad.requires_grad
    torch.testing.assert_close(z3.grad, g2.detach(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# ACLS, dual focal loss and CALS (issue 16): the fused kernels against autograd through the reference formulas.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("acls", {"margin": 2.0, "alpha": 0.3, "pos_lambda": 0.7, "neg_lambda": 0.4}),
        ("acls", {"margin": 0.0}),
        ("dfl", {"gamma": 2.5}),
        ("dfl", {"gamma": 0.5}),
        ("cals", {"margin": 3.0, "lambda_min": 0.2, "rho_min": 2.0}),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_new_losses_fused_equal_autograd_reference(name, kwargs, reduction, monkeypatch):
    monkeypatch.setattr(L, "_BLOCK_ELEMENTS", 5 * 7)  # many row blocks, a ragged last one
    z, y = random_logits(37, 7, seed=21, scale=4.0)
    y[[3, 11, 30]] = -100
    upstream = torch.rand(37, dtype=torch.float64) - 0.5
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = build_loss(name, reduction=reduction, **kwargs)(z1, y)
    valid = y != -100
    rows = ref_rows(name, z2[valid], y[valid], **kwargs)
    if reduction == "none":
        ref = torch.zeros(37, dtype=torch.float64).masked_scatter(valid, rows)
        (ours * upstream).sum().backward()
        (ref * upstream).sum().backward()
    else:
        ref = rows.mean()
        ours.backward()
        ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-13)


def test_acls_and_cals_ties_in_the_max():
    # ACLS counts every tied maximum in the top-logit term (the reference's indicator) and sends the gradient to the
    # first; CALS shares the max's gradient evenly among the tied maxima (the reference's amax).
    z = torch.tensor([[3.0, 3.0, 0.0], [2.0, -1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    for name, kwargs in (("acls", {"margin": 1.0, "neg_lambda": 1.0}), ("cals", {"margin": 1.0, "lambda_min": 0.3})):
        z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        build_loss(name, reduction="sum", **kwargs)(z1, y).backward()
        ref_rows(name, z2, y, **kwargs).sum().backward()
        torch.testing.assert_close(z1.grad, z2.grad, rtol=0, atol=1e-14)
    # Hand check of ACLS row 0 (margin 1, alpha 0.1, pos_lambda 1): two maxima 3 -> pos = 2 * (3 - 1)^2 = 8.
    loss = build_loss("acls", margin=1.0, reduction="none")
    loss(z, y)
    assert loss.last_parts["pos"][0].item() == pytest.approx(8.0, abs=1e-12)


def test_dual_focal_p_j_is_the_largest_probability_below_the_target():
    # p = [0.5, 0.3, 0.2]: target 0 -> p_j = 0.3; target 1 -> p_j = 0.2; target 2 (the smallest) -> p_j = 0.
    z = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 3, dtype=torch.float64))
    y = torch.tensor([0, 1, 2])
    out = build_loss("dfl", gamma=1.0, reduction="none")(z, y)
    expected = [(1 - 0.5 + 0.3) * math.log(1 / 0.5), (1 - 0.3 + 0.2) * math.log(1 / 0.3), 0.8 * math.log(1 / 0.2)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_dual_focal_ties_and_signed_zeros_are_not_below_the_target():
    # Logits equal to the target's (a tie, or -0 beside a +0 target) are not strictly below it: the next lower one
    # is p_j, and a row where nothing is below has p_j = 0. Checked against the masked-maximum formula in float64.
    z = torch.tensor(
        [[0.0, -0.0, -1.0, 2.0], [-0.0, 0.0, -3.0, -2.0], [1.0, 1.0, 1.0, 1.0], [5.0, 5.0, -7.0, 4.0]],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 0, 2, 1])
    p = z.softmax(1)
    p_y = p.gather(1, y[:, None])
    below = z < z.gather(1, y[:, None])
    p_j = torch.where(below, p, 0.0).amax(1, keepdim=True)
    assert p_j[:, 0].tolist()[:3] == [p[0, 2].item(), p[1, 3].item(), 0.0]
    expected = (-((1 - p_y + p_j) ** 2) * p_y.log())[:, 0]
    for dtype in (torch.float64, torch.float32):
        out = build_loss("dfl", gamma=2.0, reduction="none")(z.to(dtype), y)
        torch.testing.assert_close(out, expected.to(dtype), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["acls", "dfl", "cals"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_new_losses_compute_half_precision_in_float32(name, dtype):
    z, y = random_logits(64, 10, dtype=torch.float32, scale=6.0, seed=22)
    z_half = z.to(dtype).requires_grad_()
    z_ref = z_half.detach().float().requires_grad_()  # the same values, upcast
    kwargs = {"margin": 2.0} if name != "dfl" else {}
    out = build_loss(name, **kwargs)(z_half, y)
    ref = build_loss(name, **kwargs)(z_ref, y)
    out.backward()
    ref.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert z_half.grad.dtype == dtype
    torch.testing.assert_close(z_half.grad.float(), z_ref.grad.to(dtype).float(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# CALS multipliers: the end-of-epoch update and its state.
# ---------------------------------------------------------------------------------------------------------------
def test_cals_multiplier_update_by_hand():
    loss = L.ClassAdaptiveLoss(
        margin=1.0, lambda_min=0.5, rho_min=1.0, rho_max=10.0, rho_step=1, rho_gamma=2.0, tao=0.9
    )
    # Epoch 0, one batch z = [[3, 0], [0, 0]], y = [0, 1], lambda = 0.5, rho = 1; h = (max - z - 1) / 1:
    #   row 0: h = [-1, 2] -> r = relu(0.5 + h) = [0, 2.5]; row 1 (tied max 0): h = [-1, -1] -> r = [0, 0].
    #   clamp(r, 0.5, 1e6) summed over rows: [0.5 + 0.5, 2.5 + 0.5] = [1, 3]; over 2 rows lambda = [0.5, 1.5].
    #   mean constraint [(-1 - 1) / 2, (2 - 1) / 2] = [-1, 0.5]; no previous epoch, so rho stays [1, 1].
    loss(torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64), torch.tensor([0, 1]))
    assert loss.epoch_statistics["count"].item() == 2
    loss.update_multipliers(epoch=0)
    assert loss.lambd.tolist() == [0.5, 1.5] and loss.rho.tolist() == [1.0, 1.0]
    assert loss.epoch_statistics["count"].item() == 0  # reset for the next epoch
    # Epoch 1, z = [[0, 2]], y = [1]: h = [(2 - 0 - 1) / 1, -1] = [1, -1]; r = [relu(0.5 + 1), relu(1.5 - 1)] =
    #   [1.5, 0.5]; P = (r^2 - lambda^2) / 2 = [(2.25 - 0.25) / 2, (0.25 - 2.25) / 2] = [1, -1], mean 0, so the loss
    #   is the cross-entropy log(1 + e^-2). lambda <- [1.5, 0.5]. Constraint [1, -1] vs previous [-1, 0.5]:
    #   class 0: 1 > 0.9 * max(-1, 0) = 0 -> rho 1 * 2 = 2; class 1: -1 <= 0.9 * 0.5 -> stays 1.
    value = loss(torch.tensor([[0.0, 2.0]], dtype=torch.float64), torch.tensor([1]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)
    assert loss.last_parts["penalty"].item() == pytest.approx(0.0, abs=1e-12)
    loss.update_multipliers(epoch=1)
    assert loss.lambd.tolist() == [1.5, 0.5] and loss.rho.tolist() == [2.0, 1.0]
    # Validation statistics drive both updates when given (the default multipliers_from="validation"): the
    # training batch would give lambda [3.5, 0.5] and a rising constraint [1, -1]; the validation sums over 2
    # positions give lambda [5, 1.2] / 2 = [2.5, 0.6] and a constraint [-3, -3] that dropped, so rho stays.
    loss(torch.tensor([[0.0, 2.0]], dtype=torch.float64), torch.tensor([1]))
    validation = {
        "count": torch.tensor(2.0),
        "multiplier": torch.tensor([5.0, 1.2], dtype=torch.float64),
        "constraint": torch.tensor([-6.0, -6.0]),
    }
    loss.update_multipliers(epoch=2, validation=validation)
    assert loss.lambd.tolist() == pytest.approx([2.5, 0.6], abs=1e-15) and loss.rho.tolist() == [2.0, 1.0]
    assert loss.previous_constraint.tolist() == [-3.0, -3.0]
    # Empty validation statistics (no labelled position) fall back to the training ones.
    loss(torch.tensor([[0.0, 2.0]], dtype=torch.float64), torch.tensor([1]))
    empty = {"count": torch.tensor(0.0), "multiplier": torch.zeros(2), "constraint": torch.zeros(2)}
    loss.update_multipliers(epoch=3, validation=empty)
    # lambda = clamp(relu([2.5, 0.6] + [2, 1] * [1, -1])) = [4.5, 0.5] (0.6 - 1 < 0 -> clamped to 0.5); constraint
    # [1, -1] against 0.9 * max(-3, 0) = 0: class 0 rose (rho 2 -> 4), class 1 did not (stays 1).
    assert loss.lambd.tolist() == pytest.approx([4.5, 0.5]) and loss.rho.tolist() == [4.0, 1.0]
    # rho_max caps the growth (rho_step 1, constraint rising each epoch).
    for epoch in range(4, 10):
        loss(torch.tensor([[0.0, 2.0 + epoch]], dtype=torch.float64), torch.tensor([1]))
        loss.update_multipliers(epoch=epoch)
    assert loss.rho[0].item() == 10.0


def test_cals_batch_without_valid_position_has_zero_statistics():
    # A caller summing last_statistics over evaluation batches (CalibrationTrainer) must not count an all-ignored
    # batch (e.g. accelerate's padding of a process's last batch) as the previous forward again.
    loss = L.ClassAdaptiveLoss(margin=1.0)
    z, y = random_logits(6, 3, seed=5)
    loss(z, y)
    assert loss.last_statistics["count"].item() == 6
    loss.eval()
    value = loss(z, torch.full((6,), -100))
    assert value.item() == 0.0
    assert loss.last_statistics["count"].item() == 0
    assert loss.last_statistics["multiplier"].tolist() == [0.0] * 3
    assert loss.last_statistics["constraint"].tolist() == [0.0] * 3


def test_cals_multipliers_from_train_ignores_validation_statistics():
    # The same first epoch as test_cals_multiplier_update_by_hand, with validation statistics that would move
    # everything: multipliers_from="train" keeps the training batch's lambda [0.5, 1.5] and constraint [-1, 0.5].
    loss = L.ClassAdaptiveLoss(margin=1.0, lambda_min=0.5, rho_step=1, rho_gamma=2.0, multipliers_from="train")
    loss(torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64), torch.tensor([0, 1]))
    validation = {"count": torch.tensor(1.0), "multiplier": torch.tensor([9.0, 9.0]), "constraint": torch.ones(2)}
    loss.update_multipliers(epoch=0, validation=validation)
    assert loss.lambd.tolist() == [0.5, 1.5] and loss.previous_constraint.tolist() == [-1.0, 0.5]
    assert "multipliers_from='train'" in repr(loss)


def test_cals_eval_mode_does_not_accumulate_and_state_round_trips():
    z, y = random_logits(20, 4, seed=23)
    loss = L.ClassAdaptiveLoss(margin=2.0, rho_step=2)
    loss(z, y)
    loss.update_multipliers(epoch=0)
    loss(z[:7], y[:7])  # part of an epoch: running statistics in the state
    loss.eval()
    loss(z, y)  # a validation forward: last_statistics only
    loss.train()
    assert loss.epoch_statistics["count"].item() == 7 and loss.last_statistics["count"].item() == 20
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    restored = L.ClassAdaptiveLoss(margin=2.0, rho_step=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in ((loss, restored),):
        torch.testing.assert_close(b.lambd, a.lambd, rtol=0, atol=0)
        torch.testing.assert_close(b.previous_constraint, a.previous_constraint, rtol=0, atol=0)
        for key in a.statistic_names:
            torch.testing.assert_close(b.epoch_statistics[key], a.epoch_statistics[key], rtol=0, atol=0)
    # Multipliers of another number of classes are refused at the next forward.
    wrong = L.ClassAdaptiveLoss(margin=2.0)
    wrong.load_state_dict({"_extra_state": {**loss.get_extra_state(), "lambd": torch.ones(5), "rho": torch.ones(5)}})
    with pytest.raises(ValueError, match="4 classes.*set for 5"):
        wrong(z, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": 0.0}, "margin.*> 0"),
        ({"lambda_min": 2.0, "lambda_max": 1.0}, "lambda_min.*<=.*lambda_max"),
        ({"rho_min": -1.0}, "rho_min"),
        ({"rho_step": -1}, "rho_step.*>= 0"),
        ({"rho_gamma": 0.5}, "rho_gamma.*>= 1"),
        ({"multipliers_from": "val"}, r"multipliers_from.*\('validation', 'train'\).*'val'"),
    ],
)
def test_cals_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loss("cals", **kwargs)
