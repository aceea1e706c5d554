"""Image grids for TensorBoard: built on the device, logged by rank 0 only."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid


def grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> one (3, H', W') grid image on the CPU."""
    images = images.detach().float().clamp(0, 1)
    return make_grid(images, nrow=nrow, padding=pad, pad_value=1.0).cpu()


def rows(*batches: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Stack equally long batches as rows: e.g. inputs above their reconstructions."""
    n = batches[0].shape[0]
    return grid(torch.cat([b[:n] for b in batches]), nrow=n, pad=pad)


def log_image(module, tag: str, image: torch.Tensor, step: int | None = None) -> None:
    """Send a (3, H, W) image to every logger that takes images (TensorBoard); no-op elsewhere."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero:
        return
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, image, step)
