"""The conditional GAN's own figure: one row per class from the same noise vectors."""

from __future__ import annotations

from nnlab.figures import FigureCallback
from nnlab.models.gans import AdversarialBase


class ClassGrid(FigureCallback):
    """`class_grid`: row c holds G(z_j, c) for the first 8 fixed noise vectors z_j."""

    tag = "class_grid"

    def applies(self, model) -> bool:
        return isinstance(model, AdversarialBase) and model.conditional

    def draw(self, model, data):
        return model.class_grid(8, model.fixed_z)
