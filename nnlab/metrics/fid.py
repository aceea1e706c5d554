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

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("nnlab")


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


class GeneratorQuality:
    """The offline quality metrics of a generator, on the features of a trained LeNet-5 (loaded
    once, kept out of the model's module tree and checkpoint):

        fid        Frechet distance between N generated and the first N images of a split
        label_acc  (conditional) the LeNet's accuracy on images generated for the real labels
        fid_floor  the same distance for N real training images: what a perfect generator scores

    `classifier_ckpt` is a lenet run folder or .ckpt; None skips the metrics (one log line)."""

    def __init__(self, classifier_ckpt: str | None, skipped_note: str):
        self.path, self.skipped_note = classifier_ckpt, skipped_note
        self._classifier: list = []  # [LeNet or None], loaded on first use
        self._real: dict[str, torch.Tensor] = {}  # LeNet features of real images, per split

    def classifier(self):
        if not self._classifier:
            if self.path:
                from nnlab.models.classifiers import load_classifier

                self._classifier.append(load_classifier(self.path))
            else:
                self._classifier.append(None)
                log.warning(self.skipped_note)
        return self._classifier[0]

    def real_features(self, data, split: str, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """LeNet features of the first n images of a split (cached: real images do not change),
        and their labels."""
        images, labels = data.images(split, n)
        if split not in self._real or len(self._real[split]) != len(images):
            self._real[split] = batched(self.classifier().to(device).features, images)
        return self._real[split], labels

    @torch.no_grad()
    def __call__(self, generate, data, split: str, n: int, floor: bool, conditional: bool) -> dict:
        """{'fid', 'label_acc' (conditional), 'fid_floor' (floor=True)} of generate(labels) ->
        images in [0, 1], against the first n images of `split`; {} without a classifier."""
        clf = self.classifier()
        if clf is None or data is None:
            return {}
        real, labels = self.real_features(data, split, n, data.device)
        fake = generate(labels)
        clf = clf.to(fake.device)
        out = {"fid": fid_from_features(batched(clf.features, fake), real)}
        if conditional:
            out["label_acc"] = float((batched(clf, fake).argmax(1) == labels).float().mean())
        if floor:
            train, _ = self.real_features(data, "train", len(real), data.device)
            out["fid_floor"] = fid_from_features(train, real)
        return out
