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
# (nnlab/models, nnlab/figures, nnlab/viz.py read the trainer's loop state only through these)


class QuickHookName:
    """A LightningModule mixin: Lightning sets `_current_fx_name` before and after every hook it
    calls (~40 times a training step); nn.Module.__setattr__ first looks through parameters,
    modules and buffers (2.7 us against 0.3 us for a plain attribute, ~0.1 ms a step)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def trainer_of(module):
    """The module's Trainer, or None when it is not attached to one (LightningModule.trainer
    raises instead)."""
    return module._trainer


def should_update_logs(trainer) -> bool:
    """True on the training steps whose per-step scalars the loggers write (every log_every_n_steps;
    always under fast_dev_run)."""
    return bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs


def batch_index(trainer) -> int:
    """The training batch being processed, counted from 0 over the whole fit (a resume continues
    it)."""
    return trainer.fit_loop.total_batch_idx


def batch_in_epoch(trainer) -> int:
    """The training batch being processed, counted from 0 within the epoch."""
    return trainer.fit_loop.epoch_loop.batch_idx


def logged_step(trainer) -> int:
    """The step the loggers put this moment's scalars at (batches that stepped an optimiser; for the
    GANs' two optimisers one per batch, unlike trainer.global_step): figures use it too, so images
    and scalars line up."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float) -> None:
    """targets += weight * (sources - targets), in place, as one fused kernel per device."""
    torch._foreach_lerp_(targets, sources, weight)


# -- the trainer side: checkpoints, loggers, data connectors, loops ----------------------------
def attach_datamodule(trainer: pl.Trainer, model: pl.LightningModule, datamodule) -> None:
    """Give `model` its `datamodule` outside fit/test (nnlab sample): Lightning's data connector."""
    trainer._data_connector.attach_datamodule(model, datamodule=datamodule)


def tensorboard_file_writer(logger):
    """The FileWriter of a TensorBoardLogger's SummaryWriter: the HParams summaries go through
    it."""
    return logger.experiment._get_file_writer()


class ModelCheckpointHooks(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint with the private hooks nnlab builds on under public names.

    - `write_file(trainer, filepath)`: every checkpoint file goes through it (Lightning's
      `_save_checkpoint`); `mark_saved` records what Lightning records after a write.
    - `on_last_written(trainer)`: after each last.ckpt (`_save_last_checkpoint`).
    - `write_last(trainer)`: write last.ckpt now, with the current monitor candidates.
    - `saves_on_train_epoch_end(trainer)`: whether this callback checkpoints at the end of the
      training epoch (no validation) rather than after validation.
    - `last_step_saved`: the global step of the latest write (it stops a second write per step).
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.write_file(trainer, filepath)

    def write_file(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)

    def mark_saved(self, trainer: pl.Trainer, filepath: str) -> None:
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self.on_last_written(trainer)

    def on_last_written(self, trainer: pl.Trainer) -> None:
        pass

    def write_last(self, trainer: pl.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def saves_on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        return self._should_save_on_train_epoch_end(trainer)

    @property
    def last_step_saved(self) -> int:
        return self._last_global_step_saved

    @last_step_saved.setter
    def last_step_saved(self, step: int) -> None:
        self._last_global_step_saved = step
