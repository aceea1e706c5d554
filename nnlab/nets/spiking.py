"""Spiking neural networks: leaky integrate-and-fire (LIF) neurons trained with surrogate gradients
through time (Neftci, Mostafa & Zenke 2019; Zenke & Ganguli 2018), as plain nn.Modules.

One LIF neuron, per time step t (the discrete form snnTorch's `Leaky` uses, reset by subtraction):

    U[t] = beta * U[t-1] + I[t] - S[t-1] * theta        membrane: decay, input current, reset
    S[t] = H(U[t] - theta)                              spike when the membrane crosses theta

H is the Heaviside step: its derivative is 0 everywhere except at theta, so backpropagation through
time learns nothing. The surrogate gradient replaces dH/dU in the backward pass by the derivative of
a fast sigmoid, 1 / (slope * |U - theta| + 1)^2 (SuperSpike), while the forward pass keeps real
spikes. The reset term is detached (as in snnTorch): the gradient flows through the membrane only.

Input coding (the image is presented for num_steps steps):
    rate     pixel p -> a Bernoulli(p) spike each step: the spike rate codes the intensity
    latency  pixel p -> one spike at step round((1 - p) * (num_steps - 1)): bright pixels fire
             first, pixels below a threshold (0.01) never fire
    direct   pixel p -> the input current p at every step ("direct" or current coding; Rueckauer
             et al. 2017, Wu et al. 2019): the first LIF layer is the encoder, every layer after
             it sees spikes only. The first weight layer then runs once, not num_steps times.

The nets are feed-forward, so each weight layer runs once over all time steps folded into the
batch (one big matmul/conv instead of num_steps small ones); only the LIF recurrence loops over
time, and that loop is elementwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ENCODINGS = ("rate", "latency", "direct")
ARCHS = ("mlp", "conv")


class FastSigmoidSpike(torch.autograd.Function):
    """Forward: H(x), a spike where x = U - theta >= 0. Backward: dH/dx ~= 1 / (slope |x| + 1)^2."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * x.abs() + 1.0).square(), None


def spike(x: torch.Tensor, slope: float = 25.0) -> torch.Tensor:
    """H(x), x = U - theta, with the fast-sigmoid surrogate gradient (slope 25 as in snnTorch)."""
    return FastSigmoidSpike.apply(x, slope)


def lif(
    current: torch.Tensor, beta: float, threshold: float = 1.0, slope: float = 25.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """LIF neurons over time: input currents (T, B, ...) -> (spikes, membranes), both (T, B, ...).

    U starts at 0; U[t] = beta U[t-1] + I[t] - S[t-1] theta; S[t] = H(U[t] - theta).
    """
    mem = torch.zeros_like(current[0])
    spk = torch.zeros_like(current[0])
    spikes, mems = [], []
    # unbind, not current[t]: the backward of indexing zero-fills a whole (T, B, ...) grad per step
    for cur in current.unbind(0):
        mem = beta * mem + cur - spk.detach() * threshold
        spk = spike(mem - threshold, slope)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def rate_encode(x: torch.Tensor, num_steps: int, generator=None) -> torch.Tensor:
    """Pixels in [0, 1] (B, ...) -> Bernoulli spike trains (T, B, ...), P(spike) = pixel."""
    # U < p with U ~ Uniform(0, 1) is a Bernoulli(p) draw; 3-4x faster than torch.bernoulli on a CPU
    u = torch.rand(num_steps, *x.shape, device=x.device, dtype=x.dtype, generator=generator)
    spikes = u.lt_(x.clamp(0, 1))
    if x.requires_grad:  # straight through: d spike / d p = 1, the gradient of E[spike] = p
        spikes = spikes + (x - x.detach())  # (input gradients: saliency maps, attacks)
    return spikes


def latency_encode(x: torch.Tensor, num_steps: int, threshold: float = 0.01) -> torch.Tensor:
    """Pixels in [0, 1] (B, ...) -> one spike per pixel (T, B, ...) at step round((1 - p)(T - 1));
    pixels below `threshold` stay silent (black background carries no spikes)."""
    x = x.clamp(0, 1)
    when = ((1 - x) * (num_steps - 1)).round().long()  # (B, ...)
    steps = torch.arange(num_steps, device=x.device).view(-1, *([1] * x.dim()))
    return ((steps == when) & (x >= threshold)).to(x.dtype)


def direct_encode(x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Pixels in [0, 1] (B, ...) -> the same analog input at every step (T, B, ...), a view."""
    return x.clamp(0, 1).expand(num_steps, *x.shape)


def encode(x: torch.Tensor, num_steps: int, encoding: str = "rate") -> torch.Tensor:
    if encoding == "rate":
        return rate_encode(x, num_steps)
    if encoding == "latency":
        return latency_encode(x, num_steps)
    if encoding == "direct":
        return direct_encode(x, num_steps)
    raise ValueError(f"unknown encoding '{encoding}'; use one of {ENCODINGS}")


class TimeFolded(nn.Module):
    """A stateless layer on (T, B, ...), time folded into the batch: one call for all steps."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        t, b = x.shape[:2]
        y = self.layer(x.reshape(t * b, *x.shape[2:]))
        return y.view(t, b, *y.shape[1:])


class SpikingNet(nn.Module):
    """Feed-forward weight layers, each followed by a layer of LIF neurons; the last layer's neurons
    are the classes.

        mlp   flatten -> [Linear -> LIF] per hidden width -> Linear -> LIF (n_classes)
              (784-1000-10 is snnTorch's tutorial net)
        conv  [Conv 5x5 -> MaxPool 2 -> LIF] per channel width -> flatten -> Linear -> LIF
              (12C5-MP2-64C5-MP2-10 for 28x28, as snnTorch's convolutional tutorial)

    forward(inputs (T, B, C, H, W), constant=False) -> [(spikes, membranes) of every LIF layer],
    each (T, B, ...). constant=True: the inputs are the same at every step (direct coding), so the
    first weight layer runs on one step and its current is repeated.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        n_classes: int = 10,
        arch: str = "mlp",
        hidden: Sequence[int] = (1000,),
        beta: float = 0.95,
        threshold: float = 1.0,
        slope: float = 25.0,
        kernel: int = 5,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown SNN architecture '{arch}'; use one of {ARCHS}")
        self.beta, self.threshold, self.slope = float(beta), float(threshold), float(slope)
        c, h, w = image_shape
        layers: list[nn.Module] = []
        if arch == "mlp":
            width = c * h * w
            for n in [*hidden, n_classes]:
                layers.append(nn.Linear(width, n))
                width = n
            layers[0] = nn.Sequential(nn.Flatten(), layers[0])
        else:
            for n in hidden:
                if h < kernel or w < kernel:
                    raise ValueError(f"a {kernel}x{kernel} conv does not fit a {h}x{w} map")
                layers.append(nn.Sequential(nn.Conv2d(c, n, kernel), nn.MaxPool2d(2)))
                c, h, w = n, (h - kernel + 1) // 2, (w - kernel + 1) // 2
            layers.append(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, n_classes)))
        self.layers = nn.ModuleList(TimeFolded(layer) for layer in layers)

    def forward(
        self, x: torch.Tensor, constant: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        records = []
        for i, layer in enumerate(self.layers):
            current = layer(x[:1] if constant and i == 0 else x)
            current = current.expand(
                len(x), *current.shape[1:]
            )  # (T, B, ...): repeated if constant
            spk, mem = lif(current, self.beta, self.threshold, self.slope)
            records.append((spk, mem))
            x = spk
        return records
