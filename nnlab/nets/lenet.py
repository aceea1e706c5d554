"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition"), as a plain nn.Module.

    input 32x32 (28x28 images are padded by 2 on each side, as in the paper)
    C1  conv 6@5x5          -> 6x28x28
    S2  pool 2x2            -> 6x14x14
    C3  conv 16@5x5         -> 16x10x10   (full connection table, not the paper's sparse one)
    S4  pool 2x2            -> 16x5x5
    F5  linear 400 -> 120   (the paper's C5: a 5x5 convolution over a 5x5 map, i.e. fully connected)
    F6  linear 120 -> 84    the penultimate features (`features()`: e.g. for FID)
    out linear 84 -> classes (the paper's Euclidean RBF units replaced by a linear layer + softmax)

variant=classic: tanh and average pooling (the paper's squashing function and subsampling, without
its trainable coefficients); variant=modern: ReLU and max pooling (trains faster and better).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.errors import check_choice

VARIANTS = ("modern", "classic")
LENET_SIDE = 32  # the paper's input side; smaller images are zero-padded to it


class LeNet5(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, variant: str = "modern"):
        super().__init__()
        check_choice("LeNet-5 variant", variant, VARIANTS, error=ValueError)
        c, h, w = (int(s) for s in input_shape)
        # zero padding up to 32x32 (2 pixels a side for 28x28); larger images are used as they are
        ph, pw = max(0, LENET_SIDE - h), max(0, LENET_SIDE - w)
        self.padding = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        h, w = h + ph, w + pw
        act = nn.ReLU if variant == "modern" else nn.Tanh
        pool = nn.MaxPool2d if variant == "modern" else nn.AvgPool2d
        self.c1, self.s2 = nn.Conv2d(c, 6, 5), pool(2)
        self.c3, self.s4 = nn.Conv2d(6, 16, 5), pool(2)
        side_h, side_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if side_h < 1 or side_w < 1:
            raise ValueError(f"images of shape {list(input_shape)} are too small for LeNet-5")
        self.f5 = nn.Linear(16 * side_h * side_w, 120)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, num_classes)
        self.act = act()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> the F6 activations (B, 84)."""
        x = F.pad(x, self.padding)  # zero = the black background of MNIST-like images
        x = (x - 0.5) / 0.5  # [0, 1] -> [-1, 1]
        x = self.s2(self.act(self.c1(x)))
        x = self.s4(self.act(self.c3(x)))
        x = self.act(self.f5(x.flatten(1)))
        return self.act(self.f6(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class logits (B, num_classes)."""
        return self.out(self.features(x))
