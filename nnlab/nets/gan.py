"""Generators and discriminators for the GAN family (plain nn.Modules, no Lightning).

    MLPGenerator / MLPDiscriminator       the fully connected nets of Goodfellow et al. (2014); G
    with batch norm
    DCGANGenerator / DCGANDiscriminator   Radford et al. (2015): a projected noise vector grown by
                                          transposed convolutions (BN + ReLU, tanh out); a
                                          discriminator of strided convolutions (LeakyReLU 0.2, BN
                                          except on the first layer, no pooling) ending in one logit

Generators map noise z (B, latent_dim) to images in [-1, 1] (tanh); discriminators map images in
[-1, 1] to one logit per image (B,). With n_classes > 0 every net is conditional (Mirza & Osindero
2014): the one-hot label is concatenated to z, to the flattened image (MLP), or to the image as
n_classes constant feature maps (DCGAN). A discriminator built with `projection=True` takes the
label the way of Miyato & Koyama (2018) instead: logit = fc(h) + <embed(y), h> on its last features
h, which rewards class-consistent images much more directly than an input concatenation. Shapes
come from `image_shape` = (C, H, W): 1x28x28 (28 -> 14 -> 7) and 3x32x32 (32 -> 16 -> 8) both work
with two conv stages.

The DCGAN discriminator's normalisation (`d_norm`): `batch` (Radford et al.: batch norm after every
conv but the first), `spectral` (Miyato et al. 2018: every conv and linear layer divided by its
largest singular value, one power iteration per step; no batch norm) or `none`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.errors import check_choice
from nnlab.nets.conv import downsampled

GAN_NETS = ("mlp", "dcgan")
D_NORMS = ("batch", "spectral", "none")


def _with_label(h: torch.Tensor, y: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """Concatenate the one-hot label to a (B, D) vector, or as n_classes constant maps to a (B, C,
    H, W) image."""
    if not n_classes:
        return h
    if y is None:
        raise ValueError("this net is conditional: pass the labels y")
    onehot = F.one_hot(y.long(), n_classes).to(h.dtype)
    if h.dim() == 4:
        onehot = onehot[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
    return torch.cat([h, onehot], dim=1)


class MLPGenerator(nn.Module):
    """z (+ one-hot y) -> [Linear -> BatchNorm -> LeakyReLU(0.2)] per hidden width -> Linear ->
    tanh -> image (C, H, W).

    Batch norm in G is Radford et al.'s lesson applied to the MLP: on Fashion-MNIST it reached a
    LeNet-FID of ~100 after 450 steps where plain ReLU layers were still at ~310 (noise)."""

    def __init__(
        self, latent_dim: int, hidden: Sequence[int], image_shape: Sequence[int], n_classes: int = 0
    ):
        super().__init__()
        self.image_shape, self.n_classes = tuple(image_shape), int(n_classes)
        layers, width = [], latent_dim + self.n_classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, math.prod(self.image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        return self.net(_with_label(z, y, self.n_classes)).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """image (+ one-hot y) -> flatten -> [Linear -> LeakyReLU(0.2) -> Dropout] per width -> head ->
    logit
    (the head: Linear, plus the projection <embed(y), h> with projection=True instead of the
    one-hot input)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden: Sequence[int],
        n_classes: int = 0,
        dropout: float = 0.3,
        projection: bool = False,
    ):
        super().__init__()
        self.n_classes, self.projection = int(n_classes), bool(projection and n_classes)
        layers, width = [], math.prod(image_shape) + (0 if self.projection else self.n_classes)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width = h
        self.net = nn.Sequential(*layers)
        self.head = ProjectionHead(width, self.n_classes if self.projection else 0)

    def forward(self, x, y=None):
        x = x.flatten(1) if self.projection else _with_label(x.flatten(1), y, self.n_classes)
        return self.head(self.net(x), y)


class DCGANGenerator(nn.Module):
    """z (+ one-hot y) -> project to (c0, H/2^k, W/2^k) -> BN -> ReLU -> [ConvT 4x4/2 -> BN ->
    ReLU] ... -> ConvT -> tanh.

    `channels` are the widths from the smallest feature map up, e.g. [128, 64]: k = len(channels)
    upsamplings.
    """

    def __init__(
        self,
        latent_dim: int,
        channels: Sequence[int],
        image_shape: Sequence[int],
        n_classes: int = 0,
    ):
        super().__init__()
        c_out, h, w = image_shape
        self.n_classes = int(n_classes)
        widths = list(channels)
        self.start = (widths[0], downsampled(h, len(widths)), downsampled(w, len(widths)))
        self.project = nn.Linear(latent_dim + self.n_classes, math.prod(self.start), bias=False)
        layers = [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            nxt = c_out if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(nxt), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z, y=None):
        return self.net(self.project(_with_label(z, y, self.n_classes)).view(-1, *self.start))


class DCGANDiscriminator(nn.Module):
    """image (+ label maps) -> [Conv 4x4/2 -> (BN) -> LeakyReLU(0.2)] per width -> flatten -> head
    -> logit
    (the head: Linear, plus the projection <embed(y), h> with projection=True instead of the label
    maps)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        n_classes: int = 0,
        projection: bool = False,
        norm: str = "batch",
    ):
        super().__init__()
        check_choice("discriminator norm", norm, D_NORMS, error=ValueError)
        c, h, w = image_shape
        self.n_classes, self.projection = int(n_classes), bool(projection and n_classes)
        layers, width_in = [], c + (0 if self.projection else self.n_classes)
        for i, width in enumerate(channels):
            batch_norm = norm == "batch" and i > 0
            layers.append(nn.Conv2d(width_in, width, 4, stride=2, padding=1, bias=not batch_norm))
            layers += ([nn.BatchNorm2d(width)] if batch_norm else []) + [nn.LeakyReLU(0.2)]
            width_in = width
        self.net = nn.Sequential(*layers)
        features = width_in * downsampled(h, len(channels)) * downsampled(w, len(channels))
        self.head = ProjectionHead(features, self.n_classes if self.projection else 0)
        dcgan_init(self)
        if norm == "spectral":
            for layer in [*self.net, self.head.fc]:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x, y=None):
        h = self.net(x if self.projection else _with_label(x, y, self.n_classes))
        return self.head(h.flatten(1), y)


class ProjectionHead(nn.Module):
    """features h (B, F) -> one logit: fc(h), plus <embed(y), h> when n_classes > 0 (the projection
    discriminator)."""

    def __init__(self, features: int, n_classes: int = 0):
        super().__init__()
        self.fc = nn.Linear(features, 1)
        self.embed = nn.Embedding(n_classes, features) if n_classes else None
        if (
            self.embed is not None
        ):  # small, so the class term starts as a nudge and not as the whole logit
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, h, y=None):
        logit = self.fc(h).squeeze(1)
        if self.embed is None:
            return logit
        if y is None:
            raise ValueError("this net is conditional: pass the labels y")
        return logit + (self.embed(y.long()) * h).sum(1)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: all weights from N(0, 0.02); batch-norm scales from N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_gan_nets(
    net: str,
    latent_dim: int,
    g_dims: Sequence[int],
    d_dims: Sequence[int],
    image_shape: Sequence[int],
    n_classes: int = 0,
    projection: bool = False,
    d_norm: str = "batch",
) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) by name: `mlp` (widths of the hidden layers) or `dcgan` (conv
    channel widths; d_norm: the discriminator's normalisation, batch | spectral | none)."""
    check_choice("GAN net", net, GAN_NETS, error=ValueError)
    if net == "mlp":
        if d_norm != "batch":
            raise ValueError(f"d_norm={d_norm!r} is for the dcgan discriminator only")
        return (
            MLPGenerator(latent_dim, g_dims, image_shape, n_classes),
            MLPDiscriminator(image_shape, d_dims, n_classes, projection=projection),
        )
    return (
        DCGANGenerator(latent_dim, g_dims, image_shape, n_classes),
        DCGANDiscriminator(image_shape, d_dims, n_classes, projection=projection, norm=d_norm),
    )
