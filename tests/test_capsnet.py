"""CapsNet (Sabour et al. 2017): squash, routing by agreement and the margin loss against hand
computations; the nets' shapes for both image sizes; the decoder's mask; the Fig. 4 perturbation."""

from __future__ import annotations

import math

import pytest
import torch

from nnlab.models.capsnet import margin_loss, random_shift, reconstruction_loss
from nnlab.nets.capsule import CapsNet, lengths, perturb, route, squash


# -- squash ------------------------------------------------------------------------------------
def test_squash_by_hand():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4]])  # norms 5, 0, 0.5
    v = squash(s)
    # ||v|| = ||s||^2 / (1 + ||s||^2): 25/26 and 0.25/1.25 = 0.2
    assert torch.allclose(v.norm(dim=1), torch.tensor([25 / 26, 0.0, 0.2]), atol=1e-6)
    assert torch.allclose(v[0], torch.tensor([3.0, 4.0]) / 5 * 25 / 26, atol=1e-6)


def test_squash_keeps_direction_and_stays_below_one():
    s = torch.randn(64, 10, 16) * torch.logspace(-2, 2, 64)[:, None, None]
    v = squash(s)
    assert (lengths(v) < 1).all()
    cos = torch.nn.functional.cosine_similarity(v, s, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    # long vectors saturate near 1, short ones shrink quadratically (||v|| ~ ||s||^2)
    assert lengths(v)[-1].min() > 0.99
    assert torch.allclose(lengths(v)[0], lengths(s)[0].square(), rtol=0.01)


def test_squash_gradient_is_finite_at_zero():
    s = torch.zeros(2, 8, requires_grad=True)
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()


# -- routing -----------------------------------------------------------------------------------
def test_routing_coefficients_sum_to_one_over_the_outputs():
    u_hat = torch.randn(4, 30, 10, 16)
    for iters in (1, 2, 3):
        v, c = route(u_hat, iters)
        assert v.shape == (4, 10, 16) and c.shape == (4, 30, 10)
        assert torch.allclose(c.sum(2), torch.ones(4, 30), atol=1e-6)
        assert (c > 0).all()


def test_one_iteration_is_the_uniform_average():
    u_hat = torch.randn(2, 5, 3, 4)
    v, c = route(u_hat, 1)
    assert torch.allclose(c, torch.full_like(c, 1 / 3))
    assert torch.allclose(v, squash(u_hat.sum(1) / 3), atol=1e-6)


def test_routing_by_hand_two_iterations():
    # one input capsule voting for two outputs: u_hat_1 = (1, 0), u_hat_2 = (0, 2)
    u_hat = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # (B=1, I=1, J=2, D=2)
    v, c = route(u_hat, 2)
    # iteration 1: c = 1/2 each; s_1 = (0.5, 0), s_2 = (0, 1); v_j = squash(s_j)
    v1 = torch.tensor([0.2, 0.0])  # ||v|| = 0.25 / 1.25
    v2 = torch.tensor([0.0, 0.5])  # ||v|| = 1 / 2
    # b_j = <u_hat_j, v_j>: b_1 = 0.2, b_2 = 1.0; iteration 2: c = softmax(b)
    b = torch.tensor([float(u_hat[0, 0, 0] @ v1), float(u_hat[0, 0, 1] @ v2)])
    assert torch.allclose(b, torch.tensor([0.2, 1.0]))
    expect_c = b.softmax(0)
    assert torch.allclose(c[0, 0], expect_c, atol=1e-6)
    expect_v = squash(expect_c[:, None] * u_hat[0, 0])
    assert torch.allclose(v[0], expect_v, atol=1e-6)


def test_the_gradient_flows_through_the_last_iteration_only():
    # the couplings come from routing on detached predictions: the gradient is that of
    # squash(sum_i c_ij u_hat_j|i) with c held fixed
    torch.manual_seed(0)
    u_hat = torch.randn(2, 6, 3, 4, requires_grad=True)
    v, c = route(u_hat, 3)
    (g,) = torch.autograd.grad(v.square().sum(), u_hat)
    fixed = u_hat.detach().requires_grad_(True)
    v2 = squash((c[..., None] * fixed).sum(1))
    (g2,) = torch.autograd.grad(v2.square().sum(), fixed)
    assert torch.allclose(v, v2, atol=1e-6) and torch.allclose(g, g2, atol=1e-6)


def test_agreement_concentrates_the_coupling():
    # 20 inputs agree on output 0; their votes for outputs 1-2 are noise: routing shifts c to 0
    torch.manual_seed(0)
    u_hat = torch.randn(1, 20, 3, 8) * 0.3
    u_hat[:, :, 0] = torch.ones(8) * 0.5 + 0.05 * torch.randn(20, 8)
    _, c1 = route(u_hat, 1)
    _, c3 = route(u_hat, 3)
    assert c3[0, :, 0].mean() > c1[0, :, 0].mean() + 0.2


# -- the margin loss ---------------------------------------------------------------------------
def test_margin_loss_by_hand():
    lengths_ = torch.tensor([[0.95, 0.05, 0.5], [0.2, 0.8, 0.0]])
    labels = torch.tensor([0, 2])
    # image 0: true class 0 at 0.95 > 0.9: 0; class 1 at 0.05 < 0.1: 0;
    #          class 2: 0.5 * (0.5 - 0.1)^2 = 0.08
    # image 1: true class 2 at 0.0: 0.9^2 = 0.81; class 0: 0.5 * 0.1^2 = 0.005;
    #          class 1: 0.5 * 0.7^2 = 0.245
    expected = (0.08 + (0.81 + 0.005 + 0.245)) / 2
    assert math.isclose(float(margin_loss(lengths_, labels)), expected, rel_tol=1e-6)
    assert float(margin_loss(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))) == 0.0


def test_reconstruction_loss_is_the_summed_square_error():
    x = torch.zeros(2, 1, 2, 2)
    r = torch.full_like(x, 0.5)
    assert math.isclose(float(reconstruction_loss(r, x)), 4 * 0.25)


# -- the nets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,grid", [((1, 28, 28), 6), ((3, 32, 32), 8)])
def test_capsnet_shapes(shape, grid):
    net = CapsNet(shape, conv_channels=16, primary_caps=4, primary_dim=8, digit_dim=16)
    assert net.n_primary == 4 * grid * grid  # the paper: 32 * 6 * 6 = 1152 for 28x28
    x = torch.rand(3, *shape)
    v = net(x)
    assert v.shape == (3, 10, 16)
    p = lengths(v)
    assert ((p >= 0) & (p < 1)).all()
    assert net.digit.coupling.shape == (3, net.n_primary, 10)
    assert net.reconstruct(v, p.argmax(1)).shape == (3, *shape)


def test_the_paper_sizes():
    net = CapsNet((1, 28, 28))
    assert net.n_primary == 1152
    assert net.digit.weight.shape == (1152, 10, 16, 8)
    n = sum(p.numel() for p in net.parameters())
    assert 8.0e6 < n < 8.3e6  # Sabour et al.: 8.2M parameters with the decoder (6.8M without)
    without = CapsNet((1, 28, 28), decoder=None)
    assert 6.7e6 < sum(p.numel() for p in without.parameters()) < 6.9e6


def test_decoder_sees_only_the_chosen_capsule():
    torch.manual_seed(0)
    net = CapsNet((1, 28, 28), conv_channels=8, primary_caps=2)
    v = torch.rand(2, 10, 16)
    changed = v.clone()
    changed[:, 5] += 1.0  # a capsule other than the chosen one
    labels = torch.tensor([3, 7])
    assert torch.equal(net.reconstruct(v, labels), net.reconstruct(changed, labels))
    changed[:, 3] += 1.0
    assert not torch.equal(net.reconstruct(v, labels)[0], net.reconstruct(changed, labels)[0])


def test_gradients_reach_every_parameter_through_the_routing():
    net = CapsNet((1, 28, 28), conv_channels=8, primary_caps=2)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    v = net(x)
    loss = margin_loss(lengths(v), y) + 5e-4 * reconstruction_loss(net.reconstruct(v, y), x)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_perturbation_grid_changes_one_dimension_per_row():
    v = torch.rand(10, 16)
    values = torch.linspace(-0.25, 0.25, 11)
    out = perturb(v, 4, values)
    assert out.shape == (16 * 11, 10, 16)
    diff = (out - v).view(16, 11, 10, 16)
    for d in (0, 7, 15):
        assert torch.allclose(diff[d, :, 4, d], values)
        others = diff[d].clone()
        others[:, 4, d] = 0
        assert others.abs().max() == 0


def test_random_shift_moves_whole_images_with_zero_padding():
    x = torch.zeros(64, 2, 8, 8)
    x[:, :, 3, 4] = 1.0  # one bright pixel per channel
    out = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sum((2, 3)), x.sum((2, 3)))  # nothing falls off within 2 px
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 8 - 3, pos % 8 - 4
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 10  # each image its own shift
    assert torch.equal(out[:, 0], out[:, 1])  # channels move together
    assert torch.equal(random_shift(x, 0), x)


# -- the model ---------------------------------------------------------------------------------
def small_model(**kw):
    from nnlab.models.capsnet import CapsNet as CapsNetModel

    return CapsNetModel("capsnet", conv_channels=8, primary_caps=2, input_shape=[1, 28, 28], **kw)


def test_capsule_lengths_are_the_class_probabilities_used_for_accuracy():
    torch.manual_seed(0)
    model = small_model().eval()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    probs = model(x)
    assert torch.allclose(probs, lengths(model.capsules(x)))
    assert torch.equal(model.predict(x), probs.argmax(1))
    terms = model.step((x, y), "val")
    assert float(terms["acc"].compute()) == float((probs.argmax(1) == y).float().mean())
    v = model.capsules(x)
    recon = model.net.reconstruct(v, probs.argmax(1))  # val/test decode the predicted capsule
    expected = margin_loss(probs, y) + 5e-4 * reconstruction_loss(recon, x)
    assert torch.allclose(terms["loss"], expected, rtol=1e-5)


def test_without_reconstruction_the_loss_is_the_margin_loss():
    torch.manual_seed(0)
    model = small_model(reconstruction=False)
    assert model.net.decoder is None and model.reconstruction_rows(torch.rand(2, 1, 28, 28)) is None
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    terms = model.step((x, y), "train")
    assert set(terms) == {"margin", "loss"} and torch.equal(terms["loss"], terms["margin"])


def test_bad_sizes_are_one_config_error():
    from nnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="routing_iters"):
        small_model(routing_iters=0)
    with pytest.raises(ConfigError, match="m_minus"):
        small_model(m_plus=0.1, m_minus=0.9)
    with pytest.raises(ConfigError, match="at least 24"):
        from nnlab.models.capsnet import CapsNet as CapsNetModel

        CapsNetModel("capsnet", input_shape=[1, 16, 16])
