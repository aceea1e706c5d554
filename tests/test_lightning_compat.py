"""Every shim of nnlab/lightning_compat.py against the pinned Lightning and torch: each private
attribute it reads still exists and still means what the shim says."""

from __future__ import annotations

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
