"""PCA, the linear baseline every autoencoder is measured against.

A linear autoencoder with k code units and a squared-error loss learns the same subspace as
PCA with k components (Baldi & Hornik 1989), so `test/pca_mse` - the error of reconstructing
the test images from their first k principal components, fitted on the training split - is
the figure a non-linear autoencoder has to beat.

Fitted on the device that holds the training split (see `fit` for the method used).
"""

from __future__ import annotations

import torch

from nnlab.data.datamodule import float_images


class PCA:
    """x (N, d) -> codes (N, k) = (x - mean) @ components.T -> reconstruction codes @ components +
    mean."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"PCA needs at least one component, got k={k}")
        self.k = int(k)
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # (k, d), orthonormal rows

    @torch.no_grad()
    def fit(self, x: torch.Tensor, chunk: int = 8192, exact_max_dim: int = 1024) -> PCA:
        """x: (N, d) or images (N, C, H, W), floats or stored uint8 images (converted in chunks by
        the data face's float_images).

        Exact where it is cheap: the SVD of the centred data when N <= d, the eigen-decomposition of
        the d x d covariance (accumulated in chunks, solved in float64) when d <= exact_max_dim.
        Otherwise (e.g. 45k CIFAR images of 3072 values) torch.pca_lowrank, randomised but accurate
        for the leading components, instead of an O(d^3) eigen-decomposition."""
        x = _flat(x)
        n, d = x.shape
        k = min(self.k, d, n)
        if n <= d:
            xf = float_images(x).double()
            mean = xf.mean(0)
            _, _, vt = torch.linalg.svd(xf - mean, full_matrices=False)
            components = vt[:k]
        elif d <= exact_max_dim:
            mean = torch.zeros(d, dtype=torch.float64, device=x.device)
            for i in range(0, n, chunk):
                mean += float_images(x[i : i + chunk]).double().sum(0)
            mean /= n
            cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            for i in range(0, n, chunk):
                xc = float_images(x[i : i + chunk]) - mean.float()
                cov += (xc.T @ xc).double()
            evals, evecs = torch.linalg.eigh(cov / max(n - 1, 1))  # ascending
            top = torch.argsort(evals, descending=True)[:k]
            components = evecs[:, top].T
        else:
            xf = float_images(x)
            mean = xf.mean(0)
            _, _, v = torch.pca_lowrank(xf, q=min(2 * k + 10, d, n), center=True, niter=6)
            components = v[:, :k].T
        self.mean = mean.float()
        self.components = components.contiguous().float()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (float_images(_flat(x)) - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.components + self.mean

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of x on the k-dimensional principal subspace, in x's shape."""
        return self.decode(self.encode(x)).view(x.shape)

    def mse(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per pixel (the same figure as an autoencoder's
        test/mse)."""
        x = float_images(x)
        return torch.mean((self.reconstruct(x) - x) ** 2)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)
