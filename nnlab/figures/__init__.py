"""Per-epoch figures as reusable callbacks (listed in configs/callbacks/default.yaml).

A figure is one small FigureCallback subclass: `tag` (the TensorBoard image tag), `stages` (when:
"val" each validation epoch, "test" the test epoch, "train_start" once before training),
`applies(model)` (is it this model's figure?) and `draw(model, data) -> (3, H, W) image in [0, 1]`
(or None: nothing to draw this time). The base runs `draw` on rank 0 only, only when the run has a
TensorBoard logger, under torch.no_grad with the model in eval mode, and logs the image at the step
of the scalars, as `vis/<tag>` (after the loss groups in TensorBoard). The model only says *what*
to draw (its hooks: reconstruction_rows, sample_images, encode, ...); the drawing itself is in
nnlab/viz.py.

The figures shared by several families are here, and the learning rates (`lr/<optimiser>`); a
family's own figures live in nnlab/figures/<family>.py.
"""

from __future__ import annotations

import torch
from pytorch_lightning import Callback

from nnlab import lightning_compat as compat
from nnlab import viz
from nnlab.models.base import NNLabModule


def overrides(model, hook: str) -> bool:
    """Whether the model implements one of NNLabModule's figure hooks."""
    return getattr(type(model), hook) is not getattr(NNLabModule, hook)


GROUP = viz.GROUP  # every figure's tag starts with vis/ (see viz.log_image)


class FigureCallback(Callback):
    """One figure, drawn by rank 0 and logged under `vis/<tag>` (see the module docstring)."""

    tag = ""
    stages: tuple[str, ...] = ("val",)

    @property
    def full_tag(self) -> str:
        return f"{GROUP}/{self.tag}"

    def applies(self, model) -> bool:
        return True

    def draw(self, model, data) -> torch.Tensor | None:
        raise NotImplementedError

    def write(self, trainer, model, figure) -> None:
        """Log what `draw` returned; a figure that is not an image overrides this (not `log`:
        Lightning lends callbacks the model.log)."""
        viz.log_image(trainer, self.full_tag, figure)

    def run(self, trainer, model) -> None:
        data = trainer.datamodule
        if data is None or not viz.tensorboards(trainer) or not self.applies(model):
            return
        with torch.no_grad(), viz.eval_mode(model):
            figure = self.draw(model, data)
        if figure is not None:
            self.write(trainer, model, figure)

    def on_train_start(self, trainer, pl_module) -> None:
        if "train_start" in self.stages:
            self.run(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if "test" in self.stages:
            self.run(trainer, pl_module)


class Reconstructions(FigureCallback):
    """`reconstructions`: fixed validation images above what the model makes of them (the
    model's reconstruction_rows hook: autoencoders, the VAE, the RBM)."""

    tag = "reconstructions"

    def applies(self, model) -> bool:
        return overrides(model, "reconstruction_rows")

    def draw(self, model, data):
        x, _ = data.images("val", model.n_log_images)
        figure_rows = model.reconstruction_rows(x)
        if figure_rows is None:
            return None
        labels = getattr(model, "reconstruction_labels", None)
        labels = labels or ("input", *(["output"] * (len(figure_rows) - 1)))
        return viz.paired_grid(figure_rows, per_row=8, labels=labels)


class Samples(FigureCallback):
    """`samples`: new images from the same noise every epoch (the model's sample_images hook:
    the VAE, the GANs, the RBM)."""

    tag = "samples"

    def applies(self, model) -> bool:
        return overrides(model, "sample_images")

    def draw(self, model, data):
        images = model.sample_images()
        return None if images is None else viz.grid(images)


class LearningRates(Callback):
    """`lr/<optimiser>`: each optimiser's learning rate, at the start of every epoch (or step with
    logging_interval: step), named by the model's `optimizer_names` (the GANs: generator,
    discriminator), else by the optimiser's class (lr/Adam); `/<group>` for parameter groups.
    Also in trainer.callback_metrics, so metrics.json keeps the last value."""

    def __init__(self, logging_interval: str = "epoch"):
        if logging_interval not in ("epoch", "step"):
            raise ValueError(f"logging_interval={logging_interval!r}: use epoch or step")
        self.logging_interval = logging_interval

    def names(self, trainer, model) -> list[str]:
        given = list(getattr(model, "optimizer_names", None) or [])
        names = []
        for i, optimizer in enumerate(trainer.optimizers):
            names.append(given[i] if i < len(given) else type(optimizer).__name__)
        return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]

    def rates(self, trainer, model) -> dict[str, float]:
        rates = {}
        for name, optimizer in zip(self.names(trainer, model), trainer.optimizers):
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                part = f"/{group.get('name', f'pg{i + 1}')}" if len(groups) > 1 else ""
                rates[f"lr/{name}{part}"] = float(group["lr"])
        return rates

    def log_rates(self, trainer, model, rates: dict | None = None, step: int | None = None):
        if not trainer.loggers:
            return
        rates = self.rates(trainer, model) if rates is None else rates
        step = compat.logged_step(trainer) if step is None else step
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=step)
        device = trainer.strategy.root_device
        trainer.callback_metrics.update(
            {k: torch.tensor(v, device=device) for k, v in rates.items()}
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.logging_interval == "epoch":
            self.log_rates(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        several = getattr(pl_module, "several", None) is not None  # steps_per_execution > 1
        if self.logging_interval == "step" and not several and compat.should_update_logs(trainer):
            self.log_rates(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # several steps per call (nnlab/models/steps.py): the rates of each logged step, read
        # before its optimizer step as on_train_batch_start would (once for several optimisers),
        # written after the call before that step's training scalars
        loop = getattr(pl_module, "_loop", None)
        if self.logging_interval != "step" or loop is None or not loop.logging:
            return
        if getattr(self, "_logged_at", None) != (loop.trainer, loop.logged) and trainer.loggers:
            self._logged_at = (loop.trainer, loop.logged)
            rates, step = self.rates(trainer, pl_module), loop.logged
            loop.defer(lambda: self.log_rates(trainer, pl_module, rates, step))
