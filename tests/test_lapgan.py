"""LAPGAN (Denton et al. 2015): the Laplacian pyramid is exact, each level has the right shapes for
28x28 and 32x32 images, sampling runs coarse to fine, and the conditional nets use the label."""

from __future__ import annotations

import pytest
import torch

from nnlab.nets.lapgan import LAPGAN, down, level_sides, pyramid, reconstruct, up

WIDTHS_28 = dict(g_widths=[[8, 8], [8], [32]], d_widths=[[8, 16], [8], [32]])


@pytest.mark.parametrize(
    "side,sides", [(28, [28, 14, 7]), (32, [32, 16, 8]), (64, [64, 32, 16, 8])]
)
def test_level_sides(side, sides):
    assert level_sides(side) == sides


def test_odd_sides_that_cannot_be_halved_are_refused():
    with pytest.raises(ValueError, match="cannot be halved"):
        level_sides(18)  # 18 -> 9, still above 8 and odd


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_pyramid_reconstruction_is_exact(shape):
    torch.manual_seed(0)
    x = torch.rand(4, *shape) * 2 - 1
    levels = len(level_sides(shape[1]))
    pyr = pyramid(x, levels)
    assert torch.allclose(reconstruct(pyr), x, atol=1e-6)
    # and the coarsest image is the repeated average pooling of the image
    coarse = x
    for _ in range(levels - 1):
        coarse = down(coarse)
    assert torch.equal(pyr[-1], coarse)


@pytest.mark.parametrize("shape,sides", [((1, 28, 28), [28, 14, 7]), ((3, 32, 32), [32, 16, 8])])
def test_pyramid_level_shapes(shape, sides):
    pyr = pyramid(torch.rand(2, *shape), len(sides))
    assert [tuple(p.shape) for p in pyr] == [(2, shape[0], s, s) for s in sides]


def test_residuals_of_a_flat_image_are_zero_and_down_up_by_hand():
    flat = torch.full((1, 1, 8, 8), 0.3)
    for h in pyramid(flat, 3)[:-1]:
        assert torch.allclose(h, torch.zeros_like(h), atol=1e-7)
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    assert down(x).item() == 4.0  # the mean of the 2x2 block
    assert torch.equal(up(torch.full((1, 1, 1, 1), 2.0)), torch.full((1, 1, 2, 2), 2.0))


@pytest.mark.parametrize(
    "shape,widths",
    [
        ((1, 28, 28), WIDTHS_28),
        ((3, 32, 32), dict(g_widths=[[8, 8], [8], [32]], d_widths=[[8, 16], [8], [32]])),
    ],
)
def test_every_level_generates_and_discriminates_its_shapes(shape, widths):
    torch.manual_seed(0)
    net = LAPGAN(shape, latent_dim=10, **widths)
    sides = level_sides(shape[1])
    assert net.levels == len(sides)
    x = torch.rand(3, *shape) * 2 - 1
    pyr = pyramid(x, net.levels)
    for k in range(net.levels):
        z = net.noise(3, k)
        coarsest = k == net.levels - 1
        low = None if coarsest else up(pyramid(x, k + 2)[-1])  # u(I_{k+1})
        fake = net.generate(k, z, low)
        assert fake.shape == pyr[k].shape == (3, shape[0], sides[k], sides[k])
        assert net.discriminate(k, fake, low).shape == (3,)
    zs = [net.noise(3, k) for k in range(net.levels)]
    images = net.sample(zs)
    assert [im.shape[-1] for im in images] == list(reversed(sides))  # coarse -> fine
    # each finer image is the upsampled coarser one plus its generated residual
    for coarse, fine in zip(images, images[1:]):
        assert fine.shape[-1] == 2 * coarse.shape[-1]


def test_a_residual_level_uses_its_condition_and_its_noise():
    torch.manual_seed(0)
    net = LAPGAN((1, 28, 28), 10, **WIDTHS_28).eval()
    low = torch.rand(2, 1, 14, 14)
    z = net.noise(2, 1)
    base = net.generate(1, z, low)
    assert not torch.allclose(base, net.generate(1, z, low + 0.5))
    assert not torch.allclose(base, net.generate(1, net.noise(2, 1), low))


def test_class_conditional_levels_need_and_use_the_label():
    torch.manual_seed(0)
    net = LAPGAN((1, 28, 28), 10, n_classes=10, **WIDTHS_28).eval()
    zs = [net.noise(2, k) for k in range(net.levels)]
    a = net.sample(zs, torch.tensor([0, 0]))[-1]
    b = net.sample(zs, torch.tensor([5, 5]))[-1]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="conditional"):
        net.sample(zs)


def test_wrong_number_of_width_lists_is_explained():
    with pytest.raises(ValueError, match="3 levels"):
        LAPGAN((1, 28, 28), 10, g_widths=[[8], [32]], d_widths=[[8], [32]])
