"""CapsNet (Sabour, Frosst & Hinton 2017, "Dynamic routing between capsules").

The class capsules' lengths ||v_k|| are the class probabilities; the loss is the margin loss

    L = sum_k  T_k max(0, m+ - ||v_k||)^2  +  lambda (1 - T_k) max(0, ||v_k|| - m-)^2

(m+ = 0.9, m- = 0.1, lambda = 0.5; T_k = 1 for the true class), plus 0.0005 x the sum of squared
pixel errors of the reconstruction decoder, fed the true class's capsule during training and the
predicted one at test time. The paper trains with random shifts of up to 2 pixels (zero padding).

The nets are in nnlab/nets/capsule.py; the figures (reconstructions, the Fig. 4 perturbation
grid, and the classifiers' errors grid and confusion matrix) in nnlab/figures/capsnet.py and
nnlab/figures/classifiers.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.classifiers import ClassifierBase
from nnlab.nets.capsule import CapsNet as CapsNetModule
from nnlab.nets.capsule import lengths, perturb


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


class CapsNet(ClassifierBase):
    """Sabour et al. (2017): Conv1 -> PrimaryCaps -> DigitCaps (routing by agreement) -> decoder.

    forward(x) gives the class capsules' lengths (B, K) in [0, 1): the "logits" the classifier
    base, its accuracy, errors grid and confusion matrix use (argmax = the predicted class).
    """

    def __init__(
        self,
        name,
        conv_channels=256,
        primary_caps=32,
        primary_dim=8,
        digit_dim=16,
        routing_iters=3,
        reconstruction=True,
        reconstruction_weight=0.0005,
        decoder_dims=(512, 1024),
        m_plus=0.9,
        m_minus=0.1,
        lam=0.5,
        shift_pixels=2,
        channels_last=True,
        n_log_images=16,
        **kwargs,
    ):
        sizes = dict(conv=conv_channels, types=primary_caps, dim=primary_dim, digit=digit_dim)
        bad = [f"{k}={v}" for k, v in sizes.items() if not (isinstance(v, int) and v > 0)]
        if bad or not (isinstance(routing_iters, int) and routing_iters >= 1):
            raise ConfigError(
                f"CapsNet sizes must be positive integers (got {', '.join(bad) or 'those'}) and "
                f"model.routing_iters >= 1 (got {routing_iters}); the paper: 256 channels, 32 "
                "primary capsule types of 8 dimensions, 16-d class capsules, 3 iterations."
            )
        if not (0 <= m_minus < m_plus <= 1 and lam >= 0 and reconstruction_weight >= 0):
            raise ConfigError(
                f"The margin loss needs 0 <= m_minus < m_plus <= 1 and lam >= 0 (got m_plus="
                f"{m_plus}, m_minus={m_minus}, lam={lam}) and reconstruction_weight >= 0; the "
                "paper: 0.9, 0.1, 0.5 and 0.0005."
            )
        self.caps_args = dict(
            conv_channels=conv_channels,
            primary_caps=primary_caps,
            primary_dim=primary_dim,
            digit_dim=digit_dim,
            routing_iters=routing_iters,
            decoder=tuple(decoder_dims) if reconstruction else None,
        )
        self.margins = dict(m_plus=float(m_plus), m_minus=float(m_minus), lam=float(lam))
        self.recon_weight = float(reconstruction_weight) if reconstruction else 0.0
        self.shift, self.n_log_images = int(shift_pixels), int(n_log_images)
        super().__init__(name, **kwargs)
        self.channels_last = bool(channels_last)
        if self.channels_last:  # the convolutions only: DigitCaps' 4-d weight is not an image
            self.net.conv1.to(memory_format=torch.channels_last)
            self.net.primary.to(memory_format=torch.channels_last)

    def build_net(self) -> nn.Module:
        try:
            return CapsNetModule(self.input_shape, self.num_classes, **self.caps_args)
        except ValueError as err:
            raise ConfigError(
                f"CapsNet does not fit images of shape {list(self.input_shape)}: {err}. Two 9x9 "
                "convolutions need a side of at least 24 (28x28 and 32x32 both work)."
            ) from None

    # -- the model ---------------------------------------------------------------------------
    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the class capsules v (B, K, digit_dim)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class probabilities ||v_k|| (B, K)."""
        return lengths(self.capsules(x))

    def step(self, batch, stage: str) -> dict:
        """The margin loss, plus the weighted reconstruction error (the true class's capsule is
        decoded in training, the predicted one in val/test); accuracy on val/test."""
        x, y = batch
        if stage == "train":
            x = random_shift(x, self.shift)
        v = self.capsules(x)
        probs = lengths(v)
        preds = probs.argmax(1)
        terms = {"margin": margin_loss(probs, y, **self.margins)}
        loss = terms["margin"]
        if self.net.decoder is not None:
            recon = self.net.reconstruct(v, y if stage == "train" else preds)
            terms["recon"] = reconstruction_loss(recon, x)
            loss = loss + self.recon_weight * terms["recon"]
        terms["loss"] = loss
        if stage == "train":
            return terms
        acc = self.val_acc if stage == "val" else self.test_acc
        acc.update(preds, y)
        if stage == "test":
            self.test_cm.update(preds, y)
        return {**terms, "acc": acc}

    # -- figures: reconstructions and Sabour et al.'s Fig. 4 ---------------------------------------
    def reconstruction_rows(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Inputs above their reconstructions from the predicted class's capsule."""
        if self.net.decoder is None:
            return None
        v = self.capsules(x)
        return [x, self.net.reconstruct(v, lengths(v).argmax(1))]

    def perturbations(self, x: torch.Tensor, steps: int = 11, span: float = 0.25):
        """Fig. 4 of the paper for one image x (C, H, W): every dimension of its predicted
        class's capsule shifted by each of `steps` values in [-span, span] and decoded.
        Returns (images (digit_dim, steps, C, H, W), the values, the predicted class)."""
        v = self.capsules(x[None])[0]  # (K, D)
        label = int(lengths(v).argmax())
        values = torch.linspace(-span, span, steps, device=v.device)
        moved = perturb(v, label, values)  # (D * steps, K, D)
        labels = torch.full((len(moved),), label, device=v.device)
        images = self.net.reconstruct(moved, labels)
        return images.view(v.shape[1], steps, *x.shape), values, label
