"""Per-epoch figures as reusable callbacks (listed in configs/callbacks/default.yaml).

A figure is one small FigureCallback subclass: `tag` (the TensorBoard image tag), `stages` (when:
"val" each validation epoch, "test" the test epoch, "train_start" once before training),
`applies(model)` (is it this model's figure?) and `draw(model, data) -> (3, H, W) image in [0, 1]`
(or None: nothing to draw this time). The base runs `draw` on rank 0 only, only when the run has a
TensorBoard logger, under torch.no_grad with the model in eval mode, and logs the image at the step
of the scalars. The model only says *what* to draw (its hooks: reconstruction_rows, sample_images,
encode, ...); the drawing itself is in nnlab/viz.py.

The figures shared by several families are here; a family's own figures live in
nnlab/figures/<family>.py.
"""

from __future__ import annotations

import torch
from pytorch_lightning import Callback

from nnlab import viz
from nnlab.models.base import NNLabModule


def overrides(model, hook: str) -> bool:
    """Whether the model implements one of NNLabModule's figure hooks."""
    return getattr(type(model), hook) is not getattr(NNLabModule, hook)


class FigureCallback(Callback):
    """One figure, drawn by rank 0 and logged under `tag` (see the module docstring)."""

    tag = ""
    stages: tuple[str, ...] = ("val",)

    def applies(self, model) -> bool:
        return True

    def draw(self, model, data) -> torch.Tensor | None:
        raise NotImplementedError

    def write(self, trainer, model, figure) -> None:
        """Log what `draw` returned; a figure that is not an image overrides this (not `log`:
        Lightning lends callbacks the model.log)."""
        viz.log_image(trainer, self.tag, figure)

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
        return None if figure_rows is None else viz.rows(*figure_rows)


class Samples(FigureCallback):
    """`samples`: new images from the same noise every epoch (the model's sample_images hook:
    the VAE, the GANs, the RBM)."""

    tag = "samples"

    def applies(self, model) -> bool:
        return overrides(model, "sample_images")

    def draw(self, model, data):
        images = model.sample_images()
        return None if images is None else viz.grid(images)
