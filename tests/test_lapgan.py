"""LAPGAN (Denton et al. 2015): the Laplacian pyramid is exact, each level has the right shapes for
28x28 and 32x32 images, sampling runs coarse to fine, and the conditional nets use the label."""

from __future__ import annotations

import pytest
import torch

from nnlab.nets.lapgan import (
    PyramidDiscriminator,
    PyramidGenerator,
    down,
    level_sides,
    lowpass,
    pyramid,
    reconstruct,
    up,
)

G_WIDTHS = [[8, 8], [8], [32]]  # finest first; the coarsest level is an MLP
D_WIDTHS = [[8, 16], [8], [32]]


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


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_level_generates_and_discriminates_its_shapes(shape):
    torch.manual_seed(0)
    g = PyramidGenerator(shape, 10, G_WIDTHS)
    d = PyramidDiscriminator(shape, D_WIDTHS)
    sides = level_sides(shape[1])
    assert g.levels == len(sides) and g.noise_dim == 10 + sides[0] ** 2 + sides[1] ** 2
    x = torch.rand(3, *shape) * 2 - 1
    pyr, low = pyramid(x, g.levels), lowpass(x, g.levels)
    zs = g.split(torch.randn(3, g.noise_dim))
    assert [tuple(z.shape) for z in zs] == [(3, 1, s, s) for s in sides[:-1]] + [(3, 10)]
    for k in range(g.levels - 1):
        cond = up(low[k + 1])  # u(I_{k+1})
        fake = g.residual(k, zs[k], cond)
        assert fake.shape == pyr[k].shape == (3, shape[0], sides[k], sides[k])
        assert d(k, fake, cond).shape == (3,)
    coarse = g.coarsest(zs[-1])
    assert coarse.shape == pyr[-1].shape and d(g.levels - 1, coarse).shape == (3,)
    images = g.levels_of(torch.randn(3, g.noise_dim))
    assert [im.shape[-1] for im in images] == list(reversed(sides))  # coarse -> fine
    assert g(torch.randn(3, g.noise_dim)).shape == (3, *shape)


def test_sampling_adds_each_residual_to_the_upsampled_coarser_image():
    torch.manual_seed(0)
    g = PyramidGenerator((1, 28, 28), 10, G_WIDTHS).eval()
    z = torch.randn(2, g.noise_dim)
    zs = g.split(z)
    images = g.levels_of(z)
    assert torch.allclose(images[0], g.coarsest(zs[-1]))
    expected = up(images[1]) + g.residual(0, zs[0], up(images[1]))
    assert torch.allclose(images[2], expected, atol=1e-6)


def test_a_residual_level_uses_its_condition_and_its_noise():
    torch.manual_seed(0)
    g = PyramidGenerator((1, 28, 28), 10, G_WIDTHS).eval()
    low = torch.rand(2, 1, 14, 14)
    z = torch.randn(2, 1, 14, 14)
    base = g.residual(1, z, low)
    assert not torch.allclose(base, g.residual(1, z, low + 0.5))
    assert not torch.allclose(base, g.residual(1, torch.randn(2, 1, 14, 14), low))


def test_class_conditional_levels_need_and_use_the_label():
    torch.manual_seed(0)
    g = PyramidGenerator((1, 28, 28), 10, G_WIDTHS, n_classes=10).eval()
    z = torch.randn(2, g.noise_dim)
    assert not torch.allclose(g(z, torch.tensor([0, 0])), g(z, torch.tensor([5, 5])))
    with pytest.raises(ValueError, match="conditional"):
        g(z)


def test_wrong_number_of_width_lists_is_explained():
    with pytest.raises(ValueError, match="3 levels"):
        PyramidGenerator((1, 28, 28), 10, [[8], [32]])
    with pytest.raises(ValueError, match="3 levels"):
        PyramidDiscriminator((1, 28, 28), [[8], [32]])


# -- the model ---------------------------------------------------------------------------------
def small_lapgan(**kw):
    from nnlab.models.lapgan import LAPGAN

    widths = {"g_dims": G_WIDTHS, "d_dims": D_WIDTHS, "latent_dim": 10, "n_log_images": 4}
    return LAPGAN("lapgan", input_shape=[1, 28, 28], **{**widths, **kw})


def test_real_levels_are_the_pyramid_and_its_conditions():
    model = small_lapgan()
    x = torch.rand(2, 1, 28, 28)
    targets, conds = model.real_levels(x)
    pyr = pyramid(x * 2 - 1, 3)
    assert all(torch.allclose(t, p, atol=1e-6) for t, p in zip(targets, pyr))
    assert conds[-1] is None and conds[0].shape == (2, 1, 28, 28) and conds[1].shape[-1] == 14
    assert torch.allclose(reconstruct([targets[0], targets[1], targets[2]]), x * 2 - 1, atol=1e-6)


def test_the_noise_of_every_level_is_one_vector():
    model = small_lapgan()
    assert model.latent_dim == 10 + 28 * 28 + 14 * 14
    assert model.fixed_z.shape == (4, model.latent_dim)
    assert model.sample(3).shape == (3, 1, 28, 28)
    levels = model.pyramid_levels(2)  # 7, residual 14, 14, residual 28, 28
    assert [lv.shape[-1] for lv in levels] == [7, 14, 14, 28, 28]
    assert all(0 <= float(lv.min()) and float(lv.max()) <= 1 for lv in levels)


def test_projection_and_misfit_widths_are_config_errors():
    from nnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="projection"):
        small_lapgan(projection=True)
    with pytest.raises(ConfigError, match="one list per pyramid level"):
        small_lapgan(g_dims=[[8], [32]])
    with pytest.raises(ConfigError, match="model.net"):
        small_lapgan(net="dcgan")
