"""The RBM's own figure: what its hidden units have learnt to detect."""

from __future__ import annotations

from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.rbm import RBM


class Filters(FigureCallback):
    """`filters`: the weights of the first n_log_images hidden units, each as an image."""

    tag = "filters"

    def applies(self, model) -> bool:
        return isinstance(model, RBM)

    def draw(self, model, data):
        return viz.grid(model.filters(model.n_log_images))
