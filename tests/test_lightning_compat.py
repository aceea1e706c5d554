"""Every shim of nnlab/lightning_compat.py against the pinned Lightning and torch: each private
attribute it reads still exists and still means what the shim says."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from nnlab import lightning_compat as compat


# -- the model side -------------------------------------------------------------------------------
class Tiny(pl.LightningModule):
    """One linear layer on random data; records the shims' answers at every training batch."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        trainer = compat.trainer_of(self)
        self.seen.append(
            (
                compat.batch_index(trainer),
                compat.batch_in_epoch(trainer),
                compat.logged_step(trainer),
                compat.should_update_logs(trainer),
            )
        )
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(6, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(model, **kwargs):
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(model)
    return trainer


def test_loop_counters_and_the_logging_steps():
    model = Tiny()
    assert compat.trainer_of(model) is None  # not attached: None, where .trainer would raise
    trainer = fit(model, max_epochs=2, log_every_n_steps=2)
    assert compat.trainer_of(model) is trainer
    index, in_epoch, logged, update = zip(*model.seen)
    assert index == (0, 1, 2, 3, 4, 5)  # over the whole fit
    assert in_epoch == (0, 1, 2, 0, 1, 2)  # within the epoch
    assert logged == (0, 1, 2, 3, 4, 5)  # batches that stepped before this one: the loggers' step
    assert update == (False, True, False, True, False, True)  # every log_every_n_steps
    assert compat.logged_step(trainer) == trainer.global_step == 6


def test_should_update_logs_is_always_true_under_fast_dev_run():
    model = Tiny()
    fit(model, fast_dev_run=2, log_every_n_steps=50)
    assert [seen[3] for seen in model.seen] == [True, True]


def test_quick_hook_name_skips_module_setattr(monkeypatch):
    class Quick(compat.QuickHookName, pl.LightningModule):
        pass

    model = Quick()
    assert "_current_fx_name" in vars(model)  # Lightning still keeps its hook name there
    calls = []
    real = nn.Module.__setattr__
    monkeypatch.setattr(nn.Module, "__setattr__", lambda m, k, v: calls.append(k) or real(m, k, v))
    model._current_fx_name = "training_step"
    model.other = 1
    assert model._current_fx_name == "training_step" and calls == ["other"]


def test_lerp_moves_each_target_towards_its_source():
    targets = [torch.zeros(3), torch.ones(2)]
    compat.lerp_(targets, [torch.full((3,), 4.0), torch.full((2,), 3.0)], 0.25)
    assert torch.equal(targets[0], torch.full((3,), 1.0))
    assert torch.equal(targets[1], torch.full((2,), 1.5))


# -- the trainer side: checkpoints, loggers, data connectors --------------------------------------


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Data(pl.LightningDataModule):
    def _loader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 4))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def _trainer(tmp_path, **kw):
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def test_attach_datamodule_gives_the_model_its_data(tmp_path):
    model, data, trainer = _Tiny(), _Data(), _trainer(tmp_path, logger=False)
    compat.attach_datamodule(trainer, model, data)
    assert trainer.datamodule is data


def test_tensorboard_file_writer(tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="", version="")
    writer = compat.tensorboard_file_writer(logger)
    assert callable(writer.add_summary) and callable(writer.flush)


def test_model_checkpoint_hooks_route_every_write(tmp_path):
    class Recorder(compat.ModelCheckpointHooks):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.files, self.lasts = [], 0

        def write_file(self, trainer, filepath):
            self.files.append(filepath)
            super().write_file(trainer, filepath)

        def on_last_written(self, trainer):
            self.lasts += 1

    callback = Recorder(dirpath=tmp_path / "ck", monitor="val/loss", save_last=True)
    trainer = _trainer(tmp_path, logger=False, callbacks=[callback])
    trainer.fit(_Tiny(), datamodule=_Data())
    names = sorted(p.rsplit("/", 1)[-1] for p in callback.files)
    assert "last.ckpt" in names and len(names) == 2 and callback.lasts == 1
    assert callback.last_step_saved == trainer.global_step == 2
    assert isinstance(callback.saves_on_train_epoch_end(trainer), bool)
    callback.last_step_saved = -1
    callback.write_last(trainer)
    assert callback.lasts == 2 and (tmp_path / "ck" / "last.ckpt").is_file()
    callback.mark_saved(trainer, "x.ckpt")
    assert callback.last_step_saved == 2


def test_the_version_check_refuses_other_releases(monkeypatch):
    monkeypatch.setattr(pl, "__version__", "0.0.1")
    with pytest.raises(Exception, match="written for pytorch-lightning"):
        compat._check_versions()


def test_the_version_check_can_be_relaxed_for_a_fixed_image(monkeypatch):
    monkeypatch.setattr(pl, "__version__", "0.0.1")
    monkeypatch.setenv("NNLAB_UNPINNED", "1")
    with pytest.warns(UserWarning, match="NNLAB_UNPINNED=1"):
        compat._check_versions()


# -- several optimizer steps per call (nnlab/lean.py, nnlab/models/steps.py) ---------------------
def test_step_loop_shims_move_lightnings_own_counters():
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nnlab.data.batches import Chunk, TensorBatches

    model = Tiny()
    trainer = fit(model, max_epochs=1)
    loop = trainer.fit_loop.epoch_loop
    batches, logged, steps = loop.total_batch_idx, compat.logged_step(trainer), trainer.global_step
    compat.count_batches(trainer, 3)
    progress = loop.batch_progress
    assert loop.total_batch_idx == batches + 3 and progress.current.completed == 3 + 3
    compat.set_last_batch(trainer, False)
    assert not progress.is_last_batch
    compat.add_batches_that_stepped(trainer, 2)
    assert compat.logged_step(trainer) == logged + 2
    compat.count_optimizer_steps(trainer, 4, zero_grads=4, schedulers=1, automatic=True)
    assert trainer.global_step == steps + 4  # automatic: Lightning reads the automatic counter
    assert loop.manual_optimization.optim_step_progress.total.completed == 4
    loop.manual_optimization.optim_step_progress.reset()
    compat.resume_step_counter(trainer)
    assert loop.manual_optimization.optim_step_progress.total.completed == steps + 4
    checkpoint = {"loops": {"fit_loop": trainer.fit_loop.state_dict()}}
    assert compat.MANUAL_STEPS_KEY in checkpoint["loops"]["fit_loop"]
    compat.checkpoint_as_automatic(checkpoint)
    assert checkpoint["loops"]["fit_loop"][compat.MANUAL_STEPS_KEY]["total"]["completed"] == 0
    compat.load_pending_loader_state(trainer)  # nothing pending: nothing happens
    batch = (torch.ones(2, 2),)
    assert torch.equal(compat.batch_preparer(trainer)(batch)[0], batch[0])
    every = ModelCheckpoint(every_n_train_steps=3)
    assert compat.step_checkpoints([every, ModelCheckpoint()]) == [(3, 0)]

    class Passes(compat.ChunkPassThrough, Tiny):
        pass

    loader = TensorBatches(torch.zeros(4, 1), torch.zeros(4), 2)
    chunk = Chunk(loader, torch.arange(4), 0, 2)
    passes = Passes()
    assert passes._on_before_batch_transfer(chunk) is chunk
    assert passes._apply_batch_transfer_handler(chunk) is chunk
    assert passes._apply_batch_transfer_handler(batch, torch.device("cpu"))[0] is batch[0]


def test_uncompile_drops_the_compiled_call():
    net = nn.Sequential(nn.Linear(2, 2))
    net.compile(backend="eager")
    assert net._compiled_call_impl is not None
    compat.uncompile_(net)
    assert net._compiled_call_impl is None and net(torch.ones(1, 2)).shape == (1, 2)
