"""Convolutional encoders/decoders: strided convolutions down, transposed convolutions up.

Each stage halves (or doubles) the spatial size, so 1x28x28 (28 -> 14 -> 7) and 3x32x32
(32 -> 16 -> 8) both work; the sizes are computed from the input shape, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nnlab.nets.mlp import activation


def downsampled(size: int, stages: int) -> int:
    for _ in range(stages):
        if size % 2:
            raise ValueError(
                f"image side {size} is not divisible by 2**{stages}; use fewer conv stages"
            )
        size //= 2
    return size


class ConvEncoder(nn.Module):
    """(C, H, W) -> [Conv 4x4 stride 2 -> BN -> act] per channel width -> flatten -> Linear ->
    out_dim."""

    def __init__(
        self, input_shape: Sequence[int], channels: Sequence[int], out_dim: int, act: str = "relu"
    ):
        super().__init__()
        c, h, w = input_shape
        layers = []
        for width in channels:
            layers += [
                nn.Conv2d(c, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                activation(act),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(
            c * downsampled(h, len(channels)) * downsampled(w, len(channels)), out_dim
        )

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """in_dim -> Linear -> (C_last, h, w) -> [ConvTranspose 4x4 stride 2 -> BN -> act] -> image
    logits."""

    def __init__(
        self, in_dim: int, channels: Sequence[int], output_shape: Sequence[int], act: str = "relu"
    ):
        super().__init__()
        c_out, h, w = output_shape
        widths = list(reversed(list(channels)))
        self.start = (widths[0], downsampled(h, len(widths)), downsampled(w, len(widths)))
        self.fc = nn.Sequential(
            nn.Linear(in_dim, widths[0] * self.start[1] * self.start[2]), activation(act)
        )
        layers = []
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            nxt = c_out if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(nxt), activation(act)]
        self.features = nn.Sequential(*layers)

    def forward(self, z):
        return self.features(self.fc(z).view(-1, *self.start))
