"""Multi-layer perceptrons, and MLP encoders/decoders for images of any shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """in -> [Linear -> act] x len(hidden) -> Linear -> out (no activation on the output)."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, act: str = "relu"
    ):
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), activation(act)]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class MLPEncoder(nn.Module):
    """Image (C, H, W) -> flattened -> MLP -> out_dim features."""

    def __init__(
        self, input_shape: Sequence[int], hidden: Sequence[int], out_dim: int, act: str = "relu"
    ):
        super().__init__()
        self.net = MLP(math.prod(input_shape), hidden, out_dim, act)

    def forward(self, x):
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """in_dim code -> MLP (hidden layers reversed) -> image logits (C, H, W)."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int], output_shape: Sequence[int], act: str = "relu"
    ):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = MLP(in_dim, list(reversed(list(hidden))), math.prod(output_shape), act)

    def forward(self, z):
        return self.net(z).view(-1, *self.output_shape)
