"""Recurrent nets (plain nn.Modules): a many-to-one classifier and a forecaster, both on one
recurrent stack, plus the step-by-step unrolling that shows what BPTT does.

    SequenceNet    many-to-one: x (B, T, F) with lengths (B,) -> class logits (B, K). The
                   sequences are packed (pack_padded_sequence), so padding never changes the
                   answer. An image (C, H, W) is read as H steps of one row each (C*W features):
                   28 steps of 28 for Fashion-MNIST, 32 steps of 96 for CIFAR-10.
    ForecastNet    many-to-many: a window (B, T, F) -> at every step t the next H values
                   (B, T, H); many-to-one forecasting reads the last step's H values.
    unroll         the same stack one step at a time, with every hidden state h_t and every gate
                   kept: dL/dh_t for each t (vanishing/exploding gradients, Bengio et al. 1994;
                   Pascanu et al. 2013) and the LSTM's forget/input/output gates (Hochreiter &
                   Schmidhuber 1997; Gers et al. 2000) for the figures.

Truncated BPTT (Williams & Peng 1990): `tbptt` cuts the sequence into chunks of that many steps;
the hidden state is carried from chunk to chunk but detached, so a gradient never flows back
past the start of the chunk it was computed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nnlab.errors import check_choice

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# the gates of each cell, in PyTorch's order in weight_ih/weight_hh (the candidate g/n included)
GATES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new")}


def recurrent(cell, input_size, hidden_size, num_layers=1, bidirectional=False, dropout=0.0):
    """The recurrent stack (batch_first); dropout acts between stacked layers."""
    check_choice("cell", cell, CELLS, error=ValueError)
    return CELLS[cell](
        input_size,
        hidden_size,
        num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


def cell_name(rnn: nn.RNNBase) -> str:
    return {"LSTM": "lstm", "GRU": "gru"}.get(rnn.mode, "rnn")


def _detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _select(state, rows):
    """The state of the batch rows `rows` (state: (layers*dirs, B, H) or a pair of them)."""
    if isinstance(state, tuple):
        return tuple(s[:, rows] for s in state)
    return state[:, rows]


def _scatter(state, rows, new):
    """`state` with the rows `rows` replaced by `new` (out of place: autograd keeps both)."""
    if isinstance(state, tuple):
        return tuple(_scatter(s, rows, n) for s, n in zip(state, new))
    return state.index_copy(1, rows, new)


def _zeros(rnn: nn.RNNBase, batch: int, like: torch.Tensor):
    dirs = 2 if rnn.bidirectional else 1
    h = like.new_zeros(rnn.num_layers * dirs, batch, rnn.hidden_size)
    return (h, h.clone()) if rnn.mode == "LSTM" else h


def run(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None, state=None, tbptt=None):
    """Run the stack over padded sequences. x: (B, T, F); lengths: (B,) int64 on the CPU or None
    (all T). Returns (out (B, T, dirs*H) with zeros past each length, final state at each
    sequence's own last step). With tbptt=k: chunks of k steps, the state detached between."""
    b, t = x.shape[:2]
    if lengths is None:
        if not tbptt or tbptt >= t:
            return rnn(x, state)
        lengths = torch.full((b,), t, dtype=torch.int64)
    lengths = lengths.cpu()
    if not tbptt or tbptt >= t:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = rnn(packed, state)
        return pad_packed_sequence(out, batch_first=True, total_length=t)[0], state
    state = _zeros(rnn, b, x) if state is None else state
    outs = []
    for start in range(0, t, tbptt):
        stop = min(start + tbptt, t)
        chunk_len = (lengths - start).clamp(0, stop - start)
        alive = (chunk_len > 0).nonzero().flatten()
        out = x.new_zeros(b, stop - start, rnn.hidden_size * (2 if rnn.bidirectional else 1))
        if len(alive):
            rows = alive.to(x.device)
            carried = _select(state, rows)
            if start > 0:  # truncation: no gradient flows back past this chunk's first step
                carried = _detach(carried)
            sub_out, sub_state = run(rnn, x[alive, start:stop], chunk_len[alive], carried)
            out = out.index_copy(0, rows, sub_out)
            state = _scatter(state, rows, sub_state)
        outs.append(out)
    return torch.cat(outs, dim=1), state


def last_layer_state(rnn: nn.RNNBase, state) -> torch.Tensor:
    """The top layer's final hidden state, both directions joined: (B, dirs*H)."""
    h_n = state[0] if isinstance(state, tuple) else state
    dirs = 2 if rnn.bidirectional else 1
    return torch.cat(list(h_n[-dirs:]), dim=1)


class SequenceNet(nn.Module):
    """Many-to-one: the top layer's final state (each direction's) -> dropout -> linear -> logits.

    input_shape: [features] for sequences of feature vectors, [C, H, W] for images read row by
    row. The attribute names (rnn, head) are those of the image-only net before it, so its
    checkpoints load unchanged."""

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        num_classes: int = 10,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        shape = (
            [int(input_shape)] if isinstance(input_shape, int) else [int(s) for s in input_shape]
        )
        if len(shape) not in (1, 3):
            raise ValueError(f"input_shape must be [features] or [C, H, W], got {shape}")
        self.images = len(shape) == 3
        features = shape[0] * shape[2] if self.images else shape[0]
        self.directions = 2 if bidirectional else 1
        self.rnn = recurrent(cell, features, hidden_size, num_layers, bidirectional, dropout)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, num_classes)

    @staticmethod
    def rows(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, C*W): one time step per image row, all channels of that row."""
        b, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """What the stack reads: images in [0, 1] -> rows in [-1, 1]; sequences as given."""
        return (self.rows(x) - 0.5) / 0.5 if x.dim() == 4 else x

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, tbptt=None):
        """Images (B, C, H, W) in [0, 1], or sequences (B, T, F) padded after `lengths` ->
        class logits (B, num_classes)."""
        _, state = run(self.rnn, self.steps(x), lengths, tbptt=tbptt)
        return self.head(self.dropout(last_layer_state(self.rnn, state)))


class ForecastNet(nn.Module):
    """Many-to-many: at each step t, h_t -> linear -> the next `horizon` values (B, T, H)."""

    def __init__(
        self,
        input_size: int = 1,
        horizon: int = 1,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.rnn = recurrent(cell, input_size, hidden_size, num_layers, False, dropout)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, horizon)

    def forward(self, x: torch.Tensor, state=None, tbptt=None):
        """x (B, T, F) -> (forecasts (B, T, horizon), final state)."""
        out, state = run(self.rnn, x, None, state, tbptt=tbptt)
        return self.head(self.dropout(out)), state


# -- BPTT you can see: the stack one step at a time ---------------------------------------------
def _step(cell: str, x_t, h, c, w_ih, w_hh, b_ih, b_hh, relu: bool):
    """One step of one direction of one layer: (h_new, c_new, gate activations or None)."""
    gi = nn.functional.linear(x_t, w_ih, b_ih)
    gh = nn.functional.linear(h, w_hh, b_hh)
    if cell == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        return o * c.tanh(), c, (i, f, g, o)
    if cell == "gru":
        ri, zi, ni = gi.chunk(3, dim=1)
        rh, zh, nh = gh.chunk(3, dim=1)
        r, z = (ri + rh).sigmoid(), (zi + zh).sigmoid()
        n = (ni + r * nh).tanh()
        return (1 - z) * n + z * h, c, (r, z, n)
    pre = gi + gh
    return (pre.relu() if relu else pre.tanh()), c, None


def unroll(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None = None):
    """Run `rnn` step by step with its own weights (no dropout: call it in eval mode).

    Returns (out (B, T, dirs*H) as `run` gives it, final state as `run` gives it, top-layer
    forward-direction hidden states [h_0 .. h_{T-1}] each (B, H) - the tensors to take dL/dh_t
    of - and that direction's gates {name: (B, T, H)} (empty for the plain RNN)). Past a
    sequence's length its state is carried unchanged and its output is zero, as with packing."""
    cell, b, t = cell_name(rnn), x.shape[0], x.shape[1]
    lengths = torch.full((b,), t) if lengths is None else lengths
    mask = (torch.arange(t).unsqueeze(0) < lengths.cpu().unsqueeze(1)).to(x.device)  # (B, T)
    dirs = 2 if rnn.bidirectional else 1
    layer_in, finals_h, finals_c = x, [], []
    states, gates = [], {}
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            hs, h, c, trace = _unroll_direction(rnn, cell, layer_in, mask, layer, d)
            outs.append(torch.stack(hs, dim=1) * mask.unsqueeze(2).to(x.dtype))
            finals_h.append(h)
            finals_c.append(c)
            if layer == rnn.num_layers - 1 and d == 0:
                states = hs
                if trace and trace[0] is not None:
                    for k, name in enumerate(GATES[cell]):
                        gates[name] = torch.stack([g[k] for g in trace], dim=1).detach()
        layer_in = torch.cat(outs, dim=2)
    h_n = torch.stack(finals_h)
    state = (h_n, torch.stack(finals_c)) if cell == "lstm" else h_n
    return layer_in, state, states, gates


def _unroll_direction(rnn: nn.RNNBase, cell: str, layer_in, mask, layer: int, d: int):
    """One direction `d` (1: reversed) of one layer over the whole of `layer_in` (B, T, F):
    (hidden states [h_0 .. h_{T-1}] in time order, final h, final c or None, the gates per
    step in the order computed)."""
    b, t = layer_in.shape[0], layer_in.shape[1]
    sfx = f"_l{layer}" + ("_reverse" if d else "")
    w = [getattr(rnn, f"{k}{sfx}", None) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h = layer_in.new_zeros(b, rnn.hidden_size)
    c = torch.zeros_like(h) if cell == "lstm" else None
    hs = [None] * t
    trace = []
    for step in range(t) if d == 0 else reversed(range(t)):
        m = mask[:, step : step + 1].to(layer_in.dtype)
        h_new, c_new, g = _step(
            cell,
            layer_in[:, step],
            h,
            c,
            *w,
            rnn.nonlinearity == "relu" if cell == "rnn" else False,
        )
        h = m * h_new + (1 - m) * h
        c = m * c_new + (1 - m) * c if c is not None else None
        hs[step] = h
        trace.append(g)
    return hs, h, c, trace


def hidden_grad_norms(rnn: nn.RNNBase, x: torch.Tensor, lengths, loss_of_state):
    """||dL/dh_t|| of the top layer's forward direction, for every sequence and step: (B, T),
    NaN past each sequence's length; and that direction's gates {name: (B, T, H)}.

    `loss_of_state(final_state)` maps the final state (as `run` returns it) to the scalar loss.
    The derivative is the total one, through the recurrence: dL/dh_t = sum over the paths from
    h_t to L (Werbos 1990), which is what vanishes or explodes as t moves away from the loss."""
    b, t = x.shape[:2]
    lengths = torch.full((b,), t) if lengths is None else lengths.cpu()
    _, state, states, gates = unroll(rnn, x, lengths)
    grads = torch.autograd.grad(loss_of_state(state), states, allow_unused=True)
    norms = torch.stack(
        [g.norm(dim=1) if g is not None else x.new_zeros(b) for g in grads], dim=1
    ).detach()
    past = torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)
    return norms.masked_fill(past.to(norms.device), float("nan")), gates


def align_at_end(values: torch.Tensor, lengths) -> torch.Tensor:
    """(B, T) per-step values -> (T,) mean over the sequences, aligned at each one's last step
    (index T-1 is every sequence's last step; NaN where no sequence reaches back that far)."""
    b, t = values.shape
    lengths = torch.full((b,), t) if lengths is None else lengths.cpu()
    out = torch.full((b, t), float("nan"), dtype=values.dtype)
    values = values.cpu()
    for i, n in enumerate(lengths.tolist()):
        out[i, t - n :] = values[i, :n]
    return torch.nanmean(out, dim=0)
