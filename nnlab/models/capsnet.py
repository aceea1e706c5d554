"""CapsNet (Sabour, Frosst & Hinton 2017, "Dynamic routing between capsules").

The class capsules' lengths ||v_k|| are the class probabilities; the loss is the margin loss

    L = sum_k  T_k max(0, m+ - ||v_k||)^2  +  lambda (1 - T_k) max(0, ||v_k|| - m-)^2

(m+ = 0.9, m- = 0.1, lambda = 0.5; T_k = 1 for the true class), plus 0.0005 x the sum of squared
pixel errors of the reconstruction decoder, fed the true class's capsule during training and the
predicted one at test time. The paper trains with random shifts of up to 2 pixels (zero padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_loss(
    lengths: torch.Tensor,
    labels: torch.Tensor,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    lam: float = 0.5,
) -> torch.Tensor:
    """Margin loss of capsule lengths (B, K) for integer labels (B,): sum over K, batch mean."""
    t = F.one_hot(labels.long(), lengths.shape[1]).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths).square()
    absent = lam * (1 - t) * F.relu(lengths - m_minus).square()
    return (present + absent).sum(1).mean()


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Sum of squared pixel errors per image, mean over the batch (the paper weighs it 0.0005)."""
    return (recon - images).square().flatten(1).sum(1).mean()


def random_shift(x: torch.Tensor, max_shift: int, generator=None) -> torch.Tensor:
    """Each image (B, C, H, W) shifted by its own random (dy, dx) in [-max_shift, max_shift], zero
    padded: the paper's only augmentation. One gather on the device, no per-image loop."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s))
    dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]
