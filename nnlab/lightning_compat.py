"""Every access to a private attribute of Lightning or torch, in one place.

nnlab reaches past the public API of the pinned versions in a few spots (speed, resume,
TensorBoard's HParams). Each shim below names what it touches; the import-time check refuses any
other Lightning or torch release, so an upgrade fails here, loudly, instead of deep in a run.
tests/test_lightning_compat.py exercises every shim against the pinned versions.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from nnlab.errors import NNLabError

# the versions these shims were written and tested against (pyproject.toml pins the same)
LIGHTNING_VERSION = "2.6.6"
TORCH_VERSION = "2.14.1"


def _check_versions() -> None:
    torch_release = torch.__version__.split("+")[0]
    if pl.__version__ != LIGHTNING_VERSION or torch_release != TORCH_VERSION:
        raise NNLabError(
            "nnlab's Lightning/torch shims (nnlab/lightning_compat.py) are written for "
            f"pytorch-lightning {LIGHTNING_VERSION} and torch {TORCH_VERSION}, but this "
            f"environment has pytorch-lightning {pl.__version__} and torch {torch.__version__}. "
            "Install the pinned versions (`make setup`), or review every shim in "
            "nnlab/lightning_compat.py against the new release and update the pins."
        )


_check_versions()


# -- the model side: what LightningModules and nets reach for ---------------------------------


# -- the trainer side: checkpoints, loggers, data connectors, loops ----------------------------
