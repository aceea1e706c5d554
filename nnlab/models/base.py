"""NNLabModule: what every nnlab LightningModule shares.

The optimiser and the optional scheduler come from the model's YAML as plain specs
({_target_: torch.optim.Adam, lr: 1e-3}) and are built in configure_optimizers. All
constructor arguments are saved as hyper-parameters (plain Python types, so checkpoints
load with torch.load(weights_only=True)).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate

from nnlab.errors import ConfigError


class NNLabModule(pl.LightningModule):
    family = "base"

    def __init__(
        self,
        name: str,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
        input_shape=(1, 28, 28),
    ):
        super().__init__()
        # every constructor argument of the whole class chain, as plain Python types
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(f"input_shape must be [channels, height, width], got {list(input_shape)}.")

    def configure_optimizers(self) -> Any:
        spec = dict(self.hparams.get("optimizer") or {"_target_": "torch.optim.Adam", "lr": 1e-3})
        optimizer = instantiate(spec, params=self.parameters())
        sched = self.hparams.get("scheduler")
        if not sched:
            return optimizer
        sched = dict(sched)
        interval = sched.pop("interval", "epoch")
        if sched.get("total_steps") == "auto":  # OneCycleLR & co.: the optimizer steps of the whole fit
            sched["total_steps"] = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": instantiate(sched, optimizer=optimizer), "interval": interval}}

    @property
    def datamodule(self):
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None
