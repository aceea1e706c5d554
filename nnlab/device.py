"""Where a run computes: is the asked-for device there, and does the precision exist on it."""

from __future__ import annotations

import os

from nnlab.errors import ConfigError, DeviceError


def check_device(accelerator: str, precision: str | int | None = None) -> None:
    """A DeviceError when the accelerator is not there; a ConfigError when the precision would be
    silently replaced (Lightning turns 16-mixed on the CPU into bf16-mixed)."""
    import torch

    accel = str(accelerator or "auto").lower()
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"trainer.accelerator={accel} asks for a GPU, but torch sees none "
            f"(torch.cuda.is_available() is False; torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}). Run on the CPU with accelerator=cpu, or let nnlab choose "
            "with accelerator=auto; on a GPU machine, check `nvidia-smi` and that the NVIDIA "
            "driver matches this torch build."
        )
    if accel == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "trainer.accelerator=mps asks for Apple's GPU, but it is not available. "
            "Use accelerator=cpu."
        )
    on_cpu = accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())
    if on_cpu and str(precision) in ("16-mixed", "16", "16-true"):
        raise ConfigError(
            f"trainer.precision={precision} needs a CUDA GPU: on the CPU Lightning would quietly "
            "train in bf16 instead, while the run's record says 16. Use "
            "trainer.precision=bf16-mixed (or 32-true) on the CPU, or accelerator=gpu."
        )


def prefer_cached_cuda_check() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (a fork-safe CUDA probe). With no usable GPU
    that probe never caches, and every Adam/AdamW step probes NVML again (~0.1-0.4 ms a step);
    without CUDA there is no fork to protect, so take torch's plain (cached) check. Called by the
    training recipe, on purpose, after Lightning is imported."""
    import torch

    if not torch.cuda.is_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
