"""The Laplacian pyramid GAN (Denton, Chintala, Szlam & Fergus 2015, "Deep generative image models
using a Laplacian pyramid of adversarial networks"), as plain nn.Modules (no Lightning).

The pyramid of an image I_0 (d: 2x2 average pooling, u: bilinear 2x upsampling):

    I_{k+1} = d(I_k)                   the low-pass images, halved until the side is at most 8
    h_k     = I_k - u(I_{k+1})         the band-pass residual of level k (k = 0 is the finest)
    pyramid = [h_0, h_1, ..., h_{K-1}, I_K]          28x28: 28, 14 | 7      32x32: 32, 16 | 8

and I_k = u(I_{k+1}) + h_k rebuilds it exactly, whatever d and u are. LAPGAN learns one generator
per level: G_K(z_K) draws the coarsest image (an MLP GAN, as Denton et al.'s 8x8 CIFAR level), and
each finer G_k(z_k, l_k) draws the residual h_k given the upsampled coarser image l_k = u(I_{k+1})
(a conv net fed l_k and a plane of noise). Each level has its own discriminator D_k(h_k, l_k) and
its own game on the real pyramid of the data, so the levels train independently. Sampling runs
coarse to fine: I_K = G_K(z_K), I_k = u(I_{k+1}) + G_k(z_k, u(I_{k+1})).

With n_classes > 0 every net also sees the one-hot label (as in cgan).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.nets.gan import DCGANDiscriminator, MLPDiscriminator, MLPGenerator, dcgan_init

COARSEST = 8  # halve the image until its side is at most this


# -- the Laplacian pyramid --------------------------------------------------------------------
def down(x: torch.Tensor) -> torch.Tensor:
    """d: (B, C, H, W) -> (B, C, H/2, W/2), 2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def up(x: torch.Tensor) -> torch.Tensor:
    """u: (B, C, H, W) -> (B, C, 2H, 2W), bilinear (half-pixel centres)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def level_sides(side: int, coarsest: int = COARSEST) -> list[int]:
    """The image side at each level, finest first: 28 -> [28, 14, 7], 32 -> [32, 16, 8]."""
    sides = [int(side)]
    while sides[-1] > coarsest:
        if sides[-1] % 2:
            raise ValueError(f"an image side of {side} cannot be halved down to {coarsest} or less")
        sides.append(sides[-1] // 2)
    return sides


def lowpass(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[I_0, ..., I_{levels-1}]: the image and its repeated halvings, finest first."""
    out = [x]
    for _ in range(levels - 1):
        out.append(down(out[-1]))
    return out


def pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[h_0, ..., h_{levels-2}, I_{levels-1}]: the residuals, finest first, then the coarsest."""
    low = lowpass(x, levels)
    return [fine - up(coarse) for fine, coarse in zip(low, low[1:])] + [low[-1]]


def reconstruct(pyr: Sequence[torch.Tensor]) -> torch.Tensor:
    """The image back from its pyramid: I_k = u(I_{k+1}) + h_k, from the coarsest up."""
    x = pyr[-1]
    for h in reversed(pyr[:-1]):
        x = up(x) + h
    return x


def with_label_maps(x: torch.Tensor, y: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + n_classes, H, W): the one-hot label as constant maps (cgan's way)."""
    if not n_classes:
        return x
    if y is None:
        raise ValueError("this net is conditional: pass the labels y")
    onehot = F.one_hot(y.long(), n_classes).to(x.dtype)[:, :, None, None]
    return torch.cat([x, onehot.expand(-1, -1, *x.shape[2:])], dim=1)


# -- the nets of one residual level -----------------------------------------------------------
class ResidualGenerator(nn.Module):
    """G_k(z_k, l_k): [l_k (C), a noise plane (1), label maps] -> [Conv 3x3 -> BN -> ReLU] per width
    -> Conv 3x3 -> the residual h_k (C, H, W), linear (residuals are signed and small)."""

    def __init__(self, channels: int, widths: Sequence[int], n_classes: int = 0):
        super().__init__()
        self.n_classes = int(n_classes)
        layers, c = [], channels + 1 + self.n_classes
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, low: torch.Tensor, y: torch.Tensor | None = None):
        """z (B, 1, H, W) noise plane, low = u(I_{k+1}) (B, C, H, W) -> h_k (B, C, H, W)."""
        return self.net(with_label_maps(torch.cat([low, z], 1), y, self.n_classes))


class ResidualDiscriminator(nn.Module):
    """D_k(h_k, l_k): the residual beside its low-pass image (2C channels) -> strided convs."""

    def __init__(self, channels: int, side: int, widths: Sequence[int], n_classes: int = 0):
        super().__init__()
        self.net = DCGANDiscriminator((2 * channels, side, side), widths, n_classes)

    def forward(self, h: torch.Tensor, low: torch.Tensor, y: torch.Tensor | None = None):
        return self.net(torch.cat([h, low], 1), y)


class PyramidGenerator(nn.Module):
    """The generators of every level (index 0 = finest, the last = coarsest), drawing from one
    noise vector z of `noise_dim` = latent_dim + one side x side noise plane per residual level:
    z = [z_K (latent_dim) | plane of level K-1 | ... | plane of level 0].

    forward(z, y) -> the finest image I_0 in [-1, 1]-ish (the coarsest level ends in tanh, the
    residuals are unbounded); levels(z, y) -> [I_K, ..., I_0], coarse to fine.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        widths: Sequence[Sequence[int]],
        n_classes: int = 0,
    ):
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"LAPGAN needs square images, got {h}x{w}")
        self.sides = level_sides(h)
        k = len(self.sides) - 1
        if len(widths) != len(self.sides):
            raise ValueError(
                f"{h}x{w} images make a pyramid of {len(self.sides)} levels ({self.sides}); give "
                f"one width list per level, finest first (got {len(widths)})"
            )
        self.latent_dim = int(latent_dim)
        self.noise_dim = self.latent_dim + sum(s * s for s in self.sides[:k])
        coarse = (c, self.sides[k], self.sides[k])
        self.nets = nn.ModuleList(
            [ResidualGenerator(c, widths[i], n_classes) for i in range(k)]
            + [MLPGenerator(latent_dim, widths[k], coarse, n_classes)]
        )

    @property
    def levels(self) -> int:
        return len(self.sides)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The flat noise (B, noise_dim) -> per level, finest first: (B, 1, side, side) noise
        planes, then the coarsest z_K (B, latent_dim)."""
        b, k = len(z), self.levels - 1
        sizes = [self.latent_dim] + [s * s for s in reversed(self.sides[:k])]
        parts = z.split(sizes, dim=1)
        planes = [p.view(b, 1, s, s) for p, s in zip(parts[1:], reversed(self.sides[:k]))]
        return list(reversed(planes)) + [parts[0]]

    def residual(self, level: int, z: torch.Tensor, low: torch.Tensor, y=None) -> torch.Tensor:
        """G_level(z_level, low): the residual h_level given low = u(I_{level+1})."""
        return self.nets[level](z, low, y)

    def coarsest(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """G_K(z_K): the coarsest image."""
        return self.nets[-1](z, y)

    def levels_of(self, z: torch.Tensor, y=None) -> list[torch.Tensor]:
        """Coarse to fine from the flat noise: [I_K, ..., I_0], I_k = u(I_{k+1}) + G_k(z_k, ...)."""
        zs = self.split(z)
        image = self.coarsest(zs[-1], y)
        images = [image]
        for level in reversed(range(self.levels - 1)):
            low = up(image)
            image = low + self.residual(level, zs[level], low, y)
            images.append(image)
        return images

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        return self.levels_of(z, y)[-1]


class PyramidDiscriminator(nn.Module):
    """The discriminators of every level (index 0 = finest): D_k(h_k, u(I_{k+1})) for the
    residual levels, D_K(I_K) (an MLP) for the coarsest. widths[k] sizes level k (conv widths,
    one strided stage each, at most one per halving down to the coarsest side; MLP widths)."""

    def __init__(self, image_shape: Sequence[int], widths: Sequence[Sequence[int]], n_classes=0):
        super().__init__()
        c, h, _ = image_shape
        sides = level_sides(h)
        k = len(sides) - 1
        if len(widths) != len(sides):
            raise ValueError(
                f"{h}x{h} images make a pyramid of {len(sides)} levels ({sides}); give one width "
                f"list per level, finest first (got {len(widths)})"
            )
        coarse = (c, sides[k], sides[k])
        self.nets = nn.ModuleList(
            [ResidualDiscriminator(c, sides[i], widths[i], n_classes) for i in range(k)]
            + [MLPDiscriminator(coarse, widths[k], n_classes)]
        )

    def forward(self, level: int, image: torch.Tensor, low=None, y=None) -> torch.Tensor:
        """One logit per image for level `level` (low: the condition, None at the coarsest)."""
        if level == len(self.nets) - 1:
            return self.nets[level](image, y)
        return self.nets[level](image, low, y)
