"""Frechet distance between Gaussian fits of two feature sets (the FID of Heusel et al. 2017),
computed on the penultimate features of nnlab's own LeNet-5 so it works offline.

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr( (S1^1/2 S2 S1^1/2)^1/2 )

The cross term uses the symmetric form: S1^1/2 S2 S1^1/2 is symmetric positive semi-definite
(unlike S1 S2), so both square roots come from an eigendecomposition (eigh) with the tiny
negative eigenvalues of round-off clamped to 0. Everything is done in float64 on the CPU.
The numbers are not comparable with Inception-feature FIDs in papers: compare runs with each
other and with the floor (real training images vs test images).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The principal square root of a symmetric positive semi-definite matrix."""
    a = (a + a.T) / 2
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.detach().to("cpu", torch.float64).flatten(1)
    if len(f) < 2:
        raise ValueError("a Gaussian fit needs at least 2 samples")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    root1 = sqrtm_psd(s1)
    cross = root1 @ s2 @ root1
    cross_eig = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp(min=0)
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross_eig.sqrt().sum()
    return float(value.clamp(min=0))


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    return frechet_distance(*gaussian_fit(f1), *gaussian_fit(f2))


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """fn applied to x in chunks (features of many images without a memory spike)."""
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
