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


def pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[h_0, ..., h_{levels-2}, I_{levels-1}]: the residuals, finest first, then the coarsest."""
    out = []
    for _ in range(levels - 1):
        low = down(x)
        out.append(x - up(low))
        x = low
    return out + [x]


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


class LAPGAN(nn.Module):
    """The generators and discriminators of every level (index 0 = finest, the last = coarsest).

    g_widths[k] / d_widths[k] size level k's nets: conv widths for the residual levels (D: one
    strided stage per entry, at most one per halving down to the coarsest side), hidden widths of
    the MLPs for the coarsest level.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        g_widths: Sequence[Sequence[int]],
        d_widths: Sequence[Sequence[int]],
        n_classes: int = 0,
    ):
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"LAPGAN needs square images, got {h}x{w}")
        self.channels, self.latent_dim, self.n_classes = int(c), int(latent_dim), int(n_classes)
        self.sides = level_sides(h)
        if len(g_widths) != len(self.sides) or len(d_widths) != len(self.sides):
            raise ValueError(
                f"{h}x{w} images make a pyramid of {len(self.sides)} levels ({self.sides}); "
                f"give one width list per level (got {len(g_widths)} for G, {len(d_widths)} for D)"
            )
        k = len(self.sides) - 1
        coarse = (c, self.sides[k], self.sides[k])
        self.generators = nn.ModuleList(
            [ResidualGenerator(c, g_widths[i], n_classes) for i in range(k)]
            + [MLPGenerator(latent_dim, g_widths[k], coarse, n_classes)]
        )
        self.discriminators = nn.ModuleList(
            [ResidualDiscriminator(c, self.sides[i], d_widths[i], n_classes) for i in range(k)]
            + [MLPDiscriminator(coarse, d_widths[k], n_classes)]
        )

    @property
    def levels(self) -> int:
        return len(self.sides)

    def noise(self, n: int, level: int, device=None) -> torch.Tensor:
        """z_k: (n, latent_dim) at the coarsest level, an (n, 1, side, side) noise plane else."""
        if level == self.levels - 1:
            return torch.randn(n, self.latent_dim, device=device)
        side = self.sides[level]
        return torch.randn(n, 1, side, side, device=device)

    def generate(self, level: int, z: torch.Tensor, low=None, y=None) -> torch.Tensor:
        """G_level's output: the coarsest image (from z alone) or the residual h_level given low."""
        if level == self.levels - 1:
            return self.generators[level](z, y)
        return self.generators[level](z, low, y)

    def discriminate(self, level: int, image: torch.Tensor, low=None, y=None) -> torch.Tensor:
        if level == self.levels - 1:
            return self.discriminators[level](image, y)
        return self.discriminators[level](image, low, y)

    def sample(self, zs: Sequence[torch.Tensor], y=None) -> list[torch.Tensor]:
        """Coarse to fine from the noise of every level (zs[k] for level k): [I_K, ..., I_0]."""
        image = self.generate(self.levels - 1, zs[-1], y=y)
        images = [image]
        for level in reversed(range(self.levels - 1)):
            low = up(image)
            image = low + self.generate(level, zs[level], low, y)
            images.append(image)
        return images
