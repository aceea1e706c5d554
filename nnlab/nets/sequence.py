"""A many-to-one recurrent classifier that reads an image row by row (plain nn.Module).

An image (C, H, W) is a sequence of H steps, each step one row with all its channels (C*W
features): 28 steps of 28 features for Fashion-MNIST, 32 steps of 96 for CIFAR-10. The RNN's
final hidden state (both directions' when bidirectional) goes through a linear layer to the
class logits. Trained with backpropagation through time (BPTT) over the H steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnlab.errors import check_choice

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class SequenceNet(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_choice("cell", cell, CELLS, error=ValueError)
        c, _, w = (int(s) for s in input_shape)
        self.directions = 2 if bidirectional else 1
        # dropout between stacked layers (PyTorch applies it to all but the last) and before the
        # head
        self.rnn = CELLS[cell](
            c * w,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, num_classes)

    @staticmethod
    def rows(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, C*W): one time step per image row, all channels of that row."""
        b, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class logits (B, num_classes)."""
        _, h_n = self.rnn((self.rows(x) - 0.5) / 0.5)
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        # h_n: (num_layers * directions, B, hidden); the last layer's final state, each direction
        last = torch.cat(list(h_n[-self.directions :]), dim=1)
        return self.head(self.dropout(last))
