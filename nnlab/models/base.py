"""NNLabModule: what every nnlab LightningModule shares.

The optimiser and the optional scheduler come from the model's YAML as plain specs
({_target_: torch.optim.Adam, lr: 1e-3}) and are built in configure_optimizers. All
constructor arguments are saved as hyper-parameters (plain Python types, so checkpoints
load with torch.load(weights_only=True)).

Speed: `self.log` of a per-step training scalar (on_step=True, on_epoch=False) is passed on to
Lightning only on the steps its loggers write (every trainer.log_every_n_steps) - the values
of the other steps are thrown away by Lightning anyway, after costing ~10% of a small model's
step on the CPU. `compile: true` compiles every child net with torch.compile (nn.Module.compile,
so checkpoints keep their keys). Lightning's per-hook bookkeeping attribute skips nn.Module's
__setattr__ checks (~0.1 ms a step).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate

from nnlab.errors import ConfigError

# the hooks of one training step: a scalar logged there with on_step (their default) is written every log_every_n_steps
PER_STEP_HOOKS = frozenset(
    {
        "training_step",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_before_zero_grad",
    }
)
# Adam and AdamW run as one fused kernel over all parameters unless the spec says otherwise (fused/foreach):
# on this CPU a 200k-parameter Adam step took 0.33 ms fused against 1.25 ms with torch's per-tensor default
FUSABLE = frozenset({"torch.optim.Adam", "torch.optim.AdamW"})


def build_optimizer(spec: dict, params) -> Any:
    """The optimiser of a plain spec ({_target_: torch.optim.Adam, lr: 1e-3}), fused where torch offers it."""
    spec = dict(spec)
    if spec.get("_target_") in FUSABLE and "fused" not in spec and "foreach" not in spec:
        spec["fused"] = True
    return instantiate(spec, params=params)


# the hooks of validation and test: their epoch-level scalars are averaged over the DDP ranks (once per epoch)
EVAL_HOOKS = frozenset(
    {"validation_step", "test_step", "on_validation_epoch_end", "on_test_epoch_end"}
)


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
        compile: bool = False,
    ):
        super().__init__()
        # every constructor argument of the whole class chain, as plain Python types
        self.save_hyperparameters()
        # None for models whose input is not an image (e.g. the ratings of rbm_cf)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if self.input_shape is not None and len(self.input_shape) not in (1, 3):
            raise ConfigError(
                "input_shape must be [channels, height, width] (images) or [features] "
                f"(sequences), got {list(input_shape)}."
            )
        self.compile_nets, self._nets_compiled = bool(compile), False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets this plain attribute before and after every hook it calls, ~40 times a training step;
        # nn.Module.__setattr__ first checks for parameters, modules and buffers: 2.7 us against 0.3 us here
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_model(self) -> None:
        """model.compile=true: torch.compile each child net in place (once; state_dict keys unchanged)."""
        if self.compile_nets and not self._nets_compiled:
            for child in self.children():
                child.compile()
            self._nets_compiled = True

    @property
    def logging_step(self) -> bool:
        """True on the training steps whose per-step scalars Lightning writes (every trainer.log_every_n_steps):
        compute a per-step statistic only then (e.g. `if self.logging_step: self.log("train/grad_norm", ...)`)."""
        trainer = getattr(self, "_trainer", None)
        return (
            trainer is None
            or bool(trainer.fast_dev_run)
            or trainer._logger_connector.should_update_logs
        )

    def log(self, name: str, value: Any, *args, **kwargs) -> None:
        """Lightning's log, minus the per-step training scalars that Lightning would not write anyway; the
        epoch-level validation and test scalars are synchronised across DDP ranks unless told otherwise
        (each rank sees its own shard: without it, rank 0 would report its shard alone)."""
        if (
            not args
            and self._current_fx_name in PER_STEP_HOOKS
            and kwargs.get("on_step") is not False
            and not kwargs.get("on_epoch")
            and not self.logging_step
        ):
            return
        if not args and self._current_fx_name in EVAL_HOOKS and not kwargs.get("on_step"):
            kwargs.setdefault("sync_dist", True)
        super().log(name, value, *args, **kwargs)

    def configure_optimizers(self) -> Any:
        spec = dict(self.hparams.get("optimizer") or {"_target_": "torch.optim.Adam", "lr": 1e-3})
        optimizer = build_optimizer(spec, self.parameters())
        sched = self.hparams.get("scheduler")
        if not sched:
            return optimizer
        sched = dict(sched)
        interval = sched.pop("interval", "epoch")
        if (
            sched.get("total_steps") == "auto"
        ):  # OneCycleLR & co.: the optimizer steps of the whole fit
            sched["total_steps"] = int(self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": instantiate(sched, optimizer=optimizer),
                "interval": interval,
            },
        }

    @property
    def datamodule(self):
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None
