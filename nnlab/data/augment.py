"""Training-batch augmentation on the device: random crops of the zero-padded image (= random
shifts of up to `pad` pixels each way) and random horizontal flips, for a whole batch at once.

    augment(x, generator, pad=2, hflip=True)    (B, C, H, W) uint8 or float -> same shape, dtype

One gather per batch, drawn with the caller's torch.Generator on the batch's device:
no per-sample PIL, no worker processes, and the same generator state gives the same batch.
`batch_generator(device, seed, epoch, batch)` seeds one from the position in the run, so a run
resumed mid-epoch augments the batches it has left exactly as the uninterrupted run would have.

The padding is zeros, the black background of MNIST-like images. For CIFAR-10, pad=4 and hflip are
He et al. (2016)'s training augmentation (4 pixels of padding, random 32x32 crops, random flips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnlab.errors import ConfigError

KEYS = ("pad", "hflip")


def check_spec(spec) -> dict:
    """{'pad': int >= 0, 'hflip': bool} from a config's `dataset.augment` (None = off)."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(KEYS))
    pad, hflip = spec.get("pad", 0), spec.get("hflip", False)
    if unknown:
        raise ConfigError(
            f"dataset.augment has unknown keys {unknown}; the keys are pad (pixels of random "
            "shift, e.g. dataset.augment.pad=2) and hflip (true/false)."
        )
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(
            f"dataset.augment.pad={pad!r} must be a non-negative integer (0 = no random crops; "
            "2 shifts a 28x28 image by up to 2 pixels each way)."
        )
    if not isinstance(hflip, bool):
        raise ConfigError(f"dataset.augment.hflip={hflip!r} must be true or false.")
    return {"pad": pad, "hflip": hflip}


def is_active(spec: dict) -> bool:
    return bool(spec["pad"] or spec["hflip"])


def batch_generator(
    device: torch.device | str, seed: int, epoch: int, batch: int, rank: int = 0
) -> torch.Generator:
    """A generator on `device` seeded by the batch's place in the run (and the DDP rank)."""
    g = torch.Generator(device=device)
    g.manual_seed(((int(seed) * 1_000_003 + int(epoch)) * 100_003 + int(batch)) * 97 + int(rank))
    return g


def augment(
    images: torch.Tensor, generator: torch.Generator, pad: int = 0, hflip: bool = False
) -> torch.Tensor:
    """Each image shifted by (dy, dx) uniform in [-pad, pad] (zeros fill what comes in from the
    border) and mirrored left-right with probability 1/2. Returns a new tensor of the same shape,
    dtype and device; with pad=0 and hflip=False, the images themselves.

    Both are one gather from the padded batch: output pixel (i, j) of image b reads padded pixel
    (dy_b + i, dx_b + j), or (dy_b + i, dx_b + W - 1 - j) for a mirrored image."""
    if images.dim() != 4:
        raise ValueError(f"augment takes a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if not (pad or hflip):
        return images
    b, c, h, w = images.shape
    device = images.device
    # always the offsets first, then the flips: a seed gives the same shifts with or without hflip
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator, device=device)
    j = torch.arange(w, device=device)
    if hflip:
        flip = torch.rand(b, 1, generator=generator, device=device) < 0.5
        j = torch.where(flip, w - 1 - j, j)  # (B, W)
    rows = dy + torch.arange(h, device=device)  # (B, H)
    cols = dx + j  # (B, W)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images  # (B, C, H + 2p, W + 2p)
    flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (B, H, W) into the padded image
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)
