"""The classifiers' figures, drawn after the test epoch: the confusion matrix and the grid of
misclassified test images captioned true->pred (as in LeNet-5's paper)."""

from __future__ import annotations

import torch

from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.classifiers import ClassifierBase, error_labels, pick_errors


class ConfusionMatrix(FigureCallback):
    """`confusion_matrix`: the test set's, row-normalised colours with the counts."""

    tag = "confusion_matrix"
    stages = ("test",)

    def applies(self, model) -> bool:
        return isinstance(model, ClassifierBase)

    def draw(self, model, data):
        return viz.confusion_image(model.test_cm.compute(), model.class_names())


class Errors(FigureCallback):
    """`errors`: the first n_errors misclassified test images (of rank 0's shard), collected
    while the test batches pass."""

    tag = "errors"
    stages = ("test",)

    def __init__(self):
        self.found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def applies(self, model) -> bool:  # image classifiers (not the lstm on sequences)
        return isinstance(model, ClassifierBase) and len(model.input_shape or ()) == 3

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.found = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        have = sum(len(part[0]) for part in self.found)
        wanted = self.applies(pl_module) and have < pl_module.n_errors
        if wanted and viz.tensorboards(trainer):
            x, y = batch
            self.found.append(pick_errors(x, y, pl_module.predict(x), pl_module.n_errors - have))

    def draw(self, model, data):
        if not self.found:
            return None
        images, targets, preds = (torch.cat(parts) for parts in zip(*self.found))
        self.found = []
        return viz.errors_grid(images, error_labels(targets, preds, model.class_names()))
