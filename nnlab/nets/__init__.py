"""Plain nn.Modules (no Lightning here): MLP and conv encoders/decoders, and the factories
that pick one by name (`net: mlp | conv` in a model's YAML)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nnlab.errors import check_choice
from nnlab.nets.conv import ConvDecoder, ConvEncoder
from nnlab.nets.mlp import MLP, MLPDecoder, MLPEncoder

NETS = ("mlp", "conv")


def build_encoder(
    net: str, input_shape: Sequence[int], hidden: Sequence[int], out_dim: int, act: str = "relu"
) -> nn.Module:
    """`hidden` is the MLP widths for net=mlp and the conv channel widths for net=conv."""
    check_choice("net", net, NETS, error=ValueError)
    encoder = MLPEncoder if net == "mlp" else ConvEncoder
    return encoder(input_shape, hidden, out_dim, act)


def build_decoder(
    net: str, in_dim: int, hidden: Sequence[int], output_shape: Sequence[int], act: str = "relu"
) -> nn.Module:
    check_choice("net", net, NETS, error=ValueError)
    decoder = MLPDecoder if net == "mlp" else ConvDecoder
    return decoder(in_dim, hidden, output_shape, act)


__all__ = [
    "MLP",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "build_encoder",
    "build_decoder",
    "NETS",
]
