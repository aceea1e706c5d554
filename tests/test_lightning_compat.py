"""nnlab/lightning_compat.py: every shim against the pinned Lightning and torch."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from nnlab import lightning_compat as compat

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
