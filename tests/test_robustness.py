"""Attacks (FGSM, PGD) and the robustness metrics (ECE, temperature, AUROC, clustering) against
hand computations and closed forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnlab.attacks import default_step_size, fgsm, perturb, pgd
from nnlab.metrics.calibration import (
    ece_of_logits,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from nnlab.metrics.clustering import (
    adjusted_rand_index,
    cluster_accuracy,
    entropy,
    kmeans,
    normalized_mutual_info,
)
from nnlab.metrics.ood import auroc, max_softmax


@functools.cache
def _trained_net(seed: int = 0):
    """A small MLP fitted for a few hundred steps on two-class-per-template noise images: accurate
    on clean inputs, so that attacks have something to break. Trained once per session."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(4, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)
    x = (0.6 * templates[y] + 0.4 * torch.rand(256, 1, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


def _acc(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


# -- FGSM and PGD ---------------------------------------------------------------------------------
def test_fgsm_is_eps_times_the_gradient_sign_clipped():
    net, x, y = _trained_net()
    x = x.clone()
    x[:, :, 0, :4] = 0.0  # pixels at the bounds: the clip must act there
    x[:, :, 1, :4] = 1.0
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y).backward()  # the mean: the same signs as fgsm's sum
    net.zero_grad(set_to_none=True)
    eps = 0.07
    want = (x + eps * xr.grad.sign()).clamp(0, 1)
    got = fgsm(net, x, y, eps)
    assert torch.equal(got, want)
    moved = (got - x).abs()
    inside = (x > eps) & (x < 1 - eps) & (xr.grad != 0)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], eps))
    assert bool((got >= 0).all() and (got <= 1).all())
    assert all(p.grad is None for p in net.parameters()) and not net.training


@pytest.mark.parametrize("eps", [0.01, 0.1, 0.3])
def test_pgd_stays_in_the_eps_ball_and_the_pixel_range(eps):
    net, x, y = _trained_net()
    for stop in (False, True):
        adv = pgd(net, x, y, eps, steps=10, step_size=eps / 2, stop_when_fooled=stop)
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert bool((adv >= 0).all() and (adv <= 1).all())
    assert default_step_size(0.1, 20) == pytest.approx(0.0125)


def test_eps_zero_is_the_clean_batch():
    net, x, y = _trained_net()
    for kind in ("fgsm", "pgd", "none"):
        adv = perturb(net, x, y, kind, 0.0, steps=5)
        assert torch.equal(adv, x)
        assert _acc(net, adv, y) == _acc(net, x, y)


def test_attacks_never_raise_accuracy_and_do_lower_it():
    net, x, y = _trained_net()
    clean = _acc(net, x, y)
    assert clean > 0.9
    for eps in (0.02, 0.05, 0.1, 0.2):
        fgsm_acc = _acc(net, fgsm(net, x, y, eps), y)
        pgd_acc = _acc(net, pgd(net, x, y, eps, steps=10, stop_when_fooled=True), y)
        assert fgsm_acc <= clean + 1 / len(y) and pgd_acc <= clean
        assert pgd_acc <= fgsm_acc + 2 / len(y)  # the iterated attack is at least as strong
    assert _acc(net, pgd(net, x, y, 0.3, steps=20), y) < 0.5 * clean


def test_pgd_seeded_start_is_reproducible():
    net, x, y = _trained_net()
    a = pgd(net, x, y, 0.1, 3, generator=torch.Generator().manual_seed(1))
    b = pgd(net, x, y, 0.1, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# -- calibration ----------------------------------------------------------------------------------
def test_ece_by_hand():
    conf = torch.tensor([0.9, 0.9, 0.65, 0.65, 0.35])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    # bins of 1/15: {0.9, 0.9}: acc 0.5, gap 0.4; {0.65, 0.65}: acc 1, gap 0.35; {0.35}: gap 0.35
    assert expected_calibration_error(conf, correct, 15) == pytest.approx(
        2 / 5 * 0.4 + 2 / 5 * 0.35 + 1 / 5 * 0.35
    )
    bins = reliability_bins(torch.tensor([0.5, 1.0, 0.75]), torch.tensor([1.0, 0.0, 1.0]), 2)
    assert bins["count"].tolist() == [1, 2]  # (0, 0.5] and (0.5, 1]
    assert bins["accuracy"].tolist() == [1.0, 0.5]


def test_temperature_scaling_recovers_the_temperature():
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(20000, 10, generator=g)  # calibrated logits: labels drawn from softmax(z)
    y = torch.multinomial(F.softmax(z, 1), 1, generator=g).squeeze(1)
    t = fit_temperature(3.0 * z, y)  # an over-confident model: every logit 3 times too large
    assert t == pytest.approx(3.0, rel=0.05)
    assert ece_of_logits(3.0 * z, y, temperature=t) < 0.5 * ece_of_logits(3.0 * z, y)


# -- out-of-distribution --------------------------------------------------------------------------
def test_auroc_by_hand():
    scores_in, scores_out = torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.5, 0.4, 0.1])
    # pairs won by the in-distribution score: 3 + 3 + (0 + 1/2 for the tie + 1) = 7.5 of 9
    assert auroc(scores_in, scores_out) == pytest.approx(7.5 / 9)
    assert auroc(scores_out, scores_in) == pytest.approx(1.5 / 9)
    assert auroc(torch.ones(4), torch.ones(7)) == pytest.approx(0.5)
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    assert max_softmax(logits).tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-10))])


# -- clustering -----------------------------------------------------------------------------------
def test_hungarian_accuracy_on_a_permuted_labelling():
    true = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    perm = torch.tensor([2, 0, 1])[true]  # the same partition, other names
    assert cluster_accuracy(true, perm) == 1.0
    noisy = perm.clone()
    noisy[0], noisy[7] = 1, 1  # two items moved to another cluster
    assert cluster_accuracy(true, noisy) == pytest.approx(13 / 15)


def test_nmi_and_ari_known_values():
    a, b = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])
    # b refines a: I = H(a) = log 2, H(b) = 1.5 log 2 -> NMI = log 2 / (1.25 log 2) = 0.8
    assert normalized_mutual_info(a, b) == pytest.approx(0.8)
    assert adjusted_rand_index(a, b) == pytest.approx(4 / 7)  # scikit-learn's documented 0.57
    assert normalized_mutual_info(a, torch.tensor([5, 5, 3, 3])) == pytest.approx(1.0)
    assert adjusted_rand_index(a, torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    assert adjusted_rand_index(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 2, 3])) == 0.0
    assert normalized_mutual_info(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 2, 3])) == 0.0
    assert entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(math.log(4))


def test_kmeans_finds_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(4, 6, generator=g)
    labels = torch.arange(200) % 4
    x = centres[labels] + 0.3 * torch.randn(200, 6, generator=g)
    assign, found, inertia = kmeans(x, 4, n_init=3, seed=0)
    assert cluster_accuracy(labels, assign) == 1.0
    assert normalized_mutual_info(labels, assign) == pytest.approx(1.0)
    assert inertia == pytest.approx(float(((x - found[assign]) ** 2).sum()), rel=1e-4)
