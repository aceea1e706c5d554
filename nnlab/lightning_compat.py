"""Every access to a private attribute of Lightning or torch, in one place.

nnlab reaches past the public API of the pinned versions in a few spots (speed, resume,
TensorBoard's HParams). Each shim below names what it touches; the import-time check refuses any
other Lightning or torch release, so an upgrade fails here, loudly, instead of deep in a run.
tests/test_lightning_compat.py exercises every shim against the pinned versions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from nnlab.data.batches import Chunk
from nnlab.errors import NNLabError

# the versions these shims were written and tested against (pyproject.toml pins the same)
LIGHTNING_VERSION = "2.6.6"
TORCH_VERSION = "2.14.1"


def _check_versions() -> None:
    torch_release = torch.__version__.split("+")[0]
    if pl.__version__ != LIGHTNING_VERSION or torch_release != TORCH_VERSION:
        if os.environ.get("NNLAB_UNPINNED") == "1":  # a machine whose image cannot be changed
            warnings.warn(  # (scripts/gpu_check.sh): run, and say so
                f"nnlab runs with pytorch-lightning {pl.__version__} and torch {torch.__version__}"
                f" (pinned: {LIGHTNING_VERSION}, {TORCH_VERSION}): NNLAB_UNPINNED=1",
                stacklevel=2,
            )
            return
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


def uncompile_(module: torch.nn.Module) -> None:
    """Undo nn.Module.compile() on a module and its children (a throw-away copy that is timed
    eagerly): torch keeps the compiled call in `_compiled_call_impl`."""
    for child in module.modules():
        child._compiled_call_impl = None


def load_pending_loader_state(trainer: pl.Trainer) -> None:
    """A resumed fit: hand the training loader its saved position if Lightning has not. Lightning
    loads it while it sets the data up; when configure_optimizers set the data up early (OneCycle's
    total_steps: auto reads trainer.estimated_stepping_batches), that was before the checkpoint
    was read, and the position was dropped: a mid-epoch resume started the epoch over."""
    trainer.fit_loop._load_combined_loader_states()


# -- several optimizer steps per Lightning step (nnlab/lean.py's StepPlan, NNLabModule's loop) ----
# Lightning's fit loop runs one `training_step` per chunk of batches (nnlab.data.batches.Chunk);
# these shims keep its counters in batches and optimizer steps, as if it had run each batch.


class ChunkPassThrough:
    """A LightningModule mixin: a Chunk passes Lightning's batch-transfer path untouched (its
    batches are prepared one at a time by the step loop, with `batch_preparer`)."""

    def _on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        if isinstance(batch, Chunk):
            return batch
        return super()._on_before_batch_transfer(batch, dataloader_idx)

    def _apply_batch_transfer_handler(self, batch, device=None, dataloader_idx: int = 0):
        if isinstance(batch, Chunk):
            return batch
        return super()._apply_batch_transfer_handler(batch, device, dataloader_idx)


BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def batch_preparer(trainer: pl.Trainer) -> Callable:
    """What Lightning's training loop does to each batch it fetches, resolved once: the precision
    plugin's convert_input, then on_before_batch_transfer, transfer_batch_to_device and
    on_after_batch_transfer of the datamodule or the model (whichever Lightning's hook selector
    picks), to the strategy's root device."""
    selector = trainer._data_connector._datahook_selector
    convert = trainer.precision_plugin.convert_input
    before, transfer, after = (getattr(selector.get_instance(h), h) for h in BATCH_HOOKS)
    device = trainer.strategy.root_device

    def prepare(batch):
        return after(transfer(before(convert(batch), 0), device, 0), 0)

    return prepare


def count_batches(trainer: pl.Trainer, n: int) -> None:
    """n more training batches in the epoch loop's batch counters (all of ready, started,
    processed, completed; epoch and total): Lightning counts the chunk it fetches as one."""
    trainer.fit_loop.epoch_loop.batch_progress.increment_by(n)


def set_last_batch(trainer: pl.Trainer, last: bool) -> None:
    """Whether the batch being processed is the loader's last (Lightning's `is_last_batch`)."""
    trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = last


def add_batches_that_stepped(trainer: pl.Trainer, n: int) -> None:
    """Move the logging step (logged_step) by n batches."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += n


def count_optimizer_steps(
    trainer: pl.Trainer, steps: int, zero_grads: int = 0, schedulers: int = 0, automatic=False
) -> None:
    """Optimizer steps taken outside Lightning's optimizer wrapper: trainer.global_step counts them
    (the manual-optimisation counter). automatic=True (a model Lightning would optimise
    automatically) also counts them, with the zero_grad calls and scheduler steps, where
    Lightning's automatic loop would have, so that its checkpoints read the same."""
    loop = trainer.fit_loop.epoch_loop
    loop.manual_optimization.optim_step_progress.increment_by(steps)
    if automatic:
        optimizer = loop.automatic_optimization.optim_progress.optimizer
        optimizer.step.increment_by(steps)
        optimizer.zero_grad.increment_by(zero_grads)
        loop.scheduler_progress.increment_by(schedulers)


def resume_step_counter(trainer: pl.Trainer) -> None:
    """A run of a model Lightning optimises automatically, continued with several steps per call:
    its optimizer steps were counted by the automatic loop's counter; global_step now reads the
    manual one, so it starts from the same count."""
    loop = trainer.fit_loop.epoch_loop
    manual = loop.manual_optimization.optim_step_progress
    steps = loop.automatic_optimization.optim_progress.optimizer_steps
    for tracker in (manual.total, manual.current):
        tracker.ready = tracker.completed = max(tracker.completed, steps)


MANUAL_STEPS_KEY = "epoch_loop.manual_optimization.optim_step_progress"


def checkpoint_as_automatic(checkpoint: dict) -> None:
    """In a checkpoint: the manual-optimisation step counter as Lightning's automatic loop leaves it
    (zero), for a model that Lightning would optimise automatically (the automatic counter holds
    the steps): its checkpoints are those of one step per call."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    if MANUAL_STEPS_KEY in fit:
        zero = {"ready": 0, "completed": 0}
        fit[MANUAL_STEPS_KEY] = {"total": dict(zero), "current": dict(zero)}


def log_step_metrics(trainer: pl.Trainer, metrics: dict, step: int) -> None:
    """Write one step's scalars to every logger at `step`, as Lightning's logger connector writes
    the scalars of a logged training step (with the epoch)."""
    trainer._logger_connector.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)


def step_checkpoints(callbacks) -> list[tuple[int, int]]:
    """(every, last) of each callback that checkpoints every `every` optimizer steps (nnlab's
    ResumableCheckpoint.every_n_steps, Lightning's every_n_train_steps): it writes after a batch
    that ends at a global_step that is a multiple of `every` and not `last`, the step of its latest
    write."""
    out = []
    for callback in callbacks:
        own = int(getattr(callback, "every_n_steps", 0) or 0)
        if own > 0:
            out.append((own, callback._last_written_step))
        elif int(getattr(callback, "_every_n_train_steps", 0) or 0) > 0:
            out.append((callback._every_n_train_steps, callback._last_global_step_saved))
    return out


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
