"""CapsNet's own figure: Sabour et al.'s Fig. 4, what each dimension of a class capsule encodes.
(Its reconstructions are the shared `reconstructions` figure; its errors grid and confusion
matrix the classifiers'.)"""

from __future__ import annotations

from nnlab.figures import FigureCallback
from nnlab.models.capsnet import CapsNet
from nnlab.viz import outlook as viz


class Perturbations(FigureCallback):
    """`perturbations`: the first validation image's predicted class capsule, each of its
    dimensions (rows) shifted by -0.25 ... +0.25 (columns) and decoded."""

    tag = "perturbations"

    def applies(self, model) -> bool:
        return isinstance(model, CapsNet) and model.net.decoder is not None

    def draw(self, model, data):
        x, y = data.images("val", 1)
        images, values, label = model.perturbations(x[0])
        names = model.class_names(data)
        title = f"capsule dimensions of '{names[label]}' (true: {names[int(y[0])]}), decoded"
        return viz.labelled_grid(
            images,
            row_labels=[f"dim {d}" for d in range(len(images))],
            col_labels=[f"{round(v, 2) + 0.0:+.2f}" for v in values.tolist()],
            title=title,
            tile=42,
        )
