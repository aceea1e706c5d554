"""LAPGAN's own figure: samples at every level of the pyramid, coarse to fine."""

from __future__ import annotations

from nnlab.figures import FigureCallback
from nnlab.models.lapgan import LAPGAN
from nnlab.viz import outlook as viz


class Pyramid(FigureCallback):
    """`pyramid`: one row per fixed noise vector: the coarsest sample, then per finer level the
    generated residual (grey = 0) and the image it makes, all shown at the same size."""

    tag = "pyramid"

    def applies(self, model) -> bool:
        return isinstance(model, LAPGAN)

    def draw(self, model, data):
        columns = model.pyramid_levels(8)  # [I_K, h, I, ..., h, I_0], each (n, C, s, s)
        sides = model.generator.sides[::-1]  # coarse -> fine
        labels = [f"{sides[0]}x{sides[0]}"]
        for s in sides[1:]:
            labels += [f"residual {s}", f"{s}x{s}"]
        rows = [[c[i] for c in columns] for i in range(len(columns[0]))]
        title = "LAPGAN samples, coarse to fine (residuals shown as 0.5 + h)"
        return viz.labelled_grid(rows, col_labels=labels, title=title, tile=56)
