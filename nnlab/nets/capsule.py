"""Capsule networks (Sabour, Frosst & Hinton 2017, "Dynamic routing between capsules"), as plain
nn.Modules (no Lightning).

    image (C, H, W)
    Conv1        conv `conv_channels`@9x9, stride 1, ReLU   -> (256, 20, 20) for 28x28
    PrimaryCaps  conv (`primary_caps` x `primary_dim`)@9x9, stride 2 -> 32 capsule types x 8-d
                 on a 6x6 grid: 1152 capsules u_i, squashed (32x32: an 8x8 grid, 2048 capsules)
    DigitCaps    u_hat_j|i = W_ij u_i (8 -> 16), routed by agreement -> 10 capsules v_j (16-d);
                 ||v_j|| is the probability that class j is present
    Decoder      the DigitCaps vectors, all but one masked to 0 -> FC 512 -> FC 1024 -> C*H*W

The paper's sizes are the defaults here; the YAMLs choose (configs/model/capsnet.yaml is reduced).
Routing is vectorised over every (input, output) capsule pair and the batch: the only Python loop
is over the `routing_iters` iterations (3 in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """v = ||s||^2 / (1 + ||s||^2) * s / ||s||  (Sabour eq. 1): s's direction, length < 1.

    eps keeps the gradient finite at s = 0 (the length there is ~0, as it should be).
    """
    sq = s.square().sum(dim, keepdim=True)
    return s * (sq / (1.0 + sq) / torch.sqrt(sq + eps))


def route(u_hat: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing by agreement (Sabour et al. Procedure 1) over predictions u_hat (B, N_in, N_out, D).

        b_ij = 0
        repeat iters times:
            c_ij = softmax_j(b_ij)              each input capsule splits its vote over the outputs
            s_j  = sum_i c_ij u_hat_j|i         (B, N_out, D)
            v_j  = squash(s_j)
            b_ij = b_ij + <u_hat_j|i, v_j>      agreement raises the coupling (not after the last)

    Returns (v (B, N_out, D), c (B, N_in, N_out)), the coupling coefficients of the last iteration.

    The iterations before the last one see u_hat detached: the couplings are found by routing and
    the gradient flows through the last s_j only (as in XifengGuo's widely used CapsNet code; the
    paper does not say). With 3 iterations that halves the backward pass, and the sums run as
    batched matmuls in (B, N_out, N_in, D) order: ~2.5x faster on a CPU than einsum through it all.
    """
    if iters < 1:
        raise ValueError(f"routing needs at least one iteration, got {iters}")
    uh = u_hat.transpose(1, 2)  # (B, N_out, N_in, D), a view
    b = u_hat.new_zeros(uh.shape[:3])  # routing logits (B, N_out, N_in)
    if iters > 1:
        fixed = uh.detach().contiguous()
        for _ in range(iters - 1):
            v = squash((b.softmax(1).unsqueeze(2) @ fixed).squeeze(2))  # (B, N_out, D)
            b = b + (fixed @ v.unsqueeze(-1)).squeeze(-1)
    c = b.softmax(1)
    v = squash((c.unsqueeze(2) @ uh).squeeze(2))
    return v, c.transpose(1, 2)


class PrimaryCaps(nn.Module):
    """(B, C_in, H, W) -> conv (types*dim)@k, stride s -> (B, types*H'*W', dim) squashed capsules.

    The conv's channels are grouped as (type, dim): capsule (t, y, x) is channels t*dim..(t+1)*dim
    at pixel (y, x).
    """

    def __init__(self, in_channels: int, types: int, dim: int, kernel: int = 9, stride: int = 2):
        super().__init__()
        self.types, self.dim = int(types), int(dim)
        self.conv = nn.Conv2d(in_channels, self.types * self.dim, kernel, stride=stride)

    def forward(self, x):
        h = self.conv(x)  # (B, types*dim, H', W')
        b, _, gh, gw = h.shape
        h = h.view(b, self.types, self.dim, gh, gw).permute(0, 1, 3, 4, 2)
        return squash(h.reshape(b, self.types * gh * gw, self.dim))  # (B, N_in, dim)


class DigitCaps(nn.Module):
    """u (B, N_in, D_in) -> u_hat_j|i = W_ij u_i (B, N_in, N_out, D_out) -> v (B, N_out, D_out).

    One 8x16 matrix per (input, output) pair (N_in * N_out of them), from N(0, 1/N_in): at the
    start every s_j sums N_in votes weighted 1/N_out, so this keeps ||s_j|| the same for 288 or
    1152 inputs. (The 0.01 of common code left the reduced net's capsules near length 0, where
    the squash's gradient ~2||s|| vanishes: 76.8% after 120 steps against 81.9% with this.)
    """

    def __init__(self, n_in: int, in_dim: int, n_out: int, out_dim: int, routing_iters: int = 3):
        super().__init__()
        self.routing_iters = int(routing_iters)
        self.weight = nn.Parameter(torch.randn(n_in, n_out, out_dim, in_dim) / math.sqrt(n_in))
        self.coupling: torch.Tensor | None = (
            None  # c of the last forward (B, N_in, N_out), detached
        )

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """u_hat (B, N_in, N_out, D_out): one matmul per input capsule, batched over N_in."""
        n_in, n_out, d_out, d_in = self.weight.shape
        w = self.weight.view(n_in, n_out * d_out, d_in).transpose(1, 2)  # (N_in, D_in, N_out*D_out)
        u_hat = u.transpose(0, 1) @ w  # (N_in, B, N_out*D_out)
        return u_hat.view(n_in, -1, n_out, d_out).transpose(0, 1)  # a view (B, N_in, N_out, D_out)

    def forward(self, u):
        v, c = route(self.predictions(u), self.routing_iters)
        self.coupling = c.detach()
        return v


class CapsDecoder(nn.Module):
    """The masked DigitCaps (B, N_out, D) -> FC 512 ReLU -> FC 1024 ReLU -> FC C*H*W sigmoid."""

    def __init__(self, n_caps: int, dim: int, image_shape: Sequence[int], hidden=(512, 1024)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers, width = [], n_caps * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, math.prod(self.image_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decode capsule `labels` (B,) of v (B, N_out, D); the other capsules are zeroed."""
        mask = F.one_hot(labels.long(), v.shape[1]).to(v.dtype)  # (B, N_out)
        return self.net((v * mask[:, :, None]).flatten(1)).view(-1, *self.image_shape)


def _conv_out(size: int, kernel: int, stride: int = 1) -> int:
    out = (size - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"a {kernel}x{kernel} conv (stride {stride}) does not fit a side of {size}"
        )
    return out


class CapsNet(nn.Module):
    """Conv1 -> PrimaryCaps -> DigitCaps (-> CapsDecoder when reconstruction is on).

    forward(x) -> v (B, n_classes, digit_dim); lengths(v) are the class probabilities.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        n_classes: int = 10,
        conv_channels: int = 256,
        primary_caps: int = 32,
        primary_dim: int = 8,
        digit_dim: int = 16,
        routing_iters: int = 3,
        kernel: int = 9,
        decoder: Sequence[int] | None = (512, 1024),
    ):
        super().__init__()
        c, h, w = image_shape
        self.conv1 = nn.Sequential(nn.Conv2d(c, conv_channels, kernel), nn.ReLU())
        self.primary = PrimaryCaps(conv_channels, primary_caps, primary_dim, kernel, stride=2)
        gh = _conv_out(_conv_out(h, kernel), kernel, 2)
        gw = _conv_out(_conv_out(w, kernel), kernel, 2)
        self.n_primary = primary_caps * gh * gw  # 32 * 6 * 6 = 1152 for 28x28
        self.digit = DigitCaps(self.n_primary, primary_dim, n_classes, digit_dim, routing_iters)
        self.decoder = (
            CapsDecoder(n_classes, digit_dim, image_shape, decoder) if decoder is not None else None
        )

    def forward(self, x):
        return self.digit(self.primary(self.conv1(x)))  # (B, n_classes, digit_dim)

    def reconstruct(self, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ValueError("this CapsNet has no decoder (reconstruction is off)")
        return self.decoder(v, labels)


def lengths(v: torch.Tensor) -> torch.Tensor:
    """Capsule lengths ||v_j|| (B, N): the class probabilities, not normalised."""
    return v.norm(dim=-1)


def perturb(v: torch.Tensor, label: int, values: torch.Tensor) -> torch.Tensor:
    """Sabour et al. Fig. 4: copies of one image's capsules v (N, D), dimension d of capsule `label`
    shifted by each of `values` (K,): (D * K, N, D), ordered dimension-major (row d, column k)."""
    n_dim, k = v.shape[-1], len(values)
    out = v.expand(n_dim, k, *v.shape).clone()  # (D, K, N, D)
    idx = torch.arange(n_dim, device=v.device)
    out[idx, :, label, idx] += values.to(v)[None, :]
    return out.reshape(n_dim * k, *v.shape)
