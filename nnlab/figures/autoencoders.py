"""The autoencoder family's own figures: the 2-D latent scatter, the embedding projector, the
sparse code's activation histogram and the stacked autoencoder's pre-trained reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch

from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.autoencoders import AutoencoderBase, SparseAE, StackedAE


def codes(model: AutoencoderBase, data, split: str, n: int):
    """encode() of the first n images of a split: (codes, labels, images in [0, 1])."""
    images, labels = data.images(split, n)
    chunks = images.split(data.eval_batch_size)
    return torch.cat([model.encode(chunk) for chunk in chunks]), labels, images


class Latent(FigureCallback):
    """`latent`: the codes of (up to n_embed, else 1000) images as a scatter coloured by class,
    for a 2-D code; on the validation split each epoch and on the test split."""

    tag = "latent"
    stages = ("val", "test")

    def applies(self, model) -> bool:
        return isinstance(model, AutoencoderBase) and model.latent_dim == 2

    def draw(self, model, data):
        split = "test" if model.trainer.testing else "val"
        points, labels, _ = codes(model, data, split, model.n_embed or 1000)
        return viz.scatter_image(points, labels, data.classes)


class Projector(FigureCallback):
    """TensorBoard's embedding projector: the codes of the first n_embed test images, with their
    class names and thumbnails (tag `test_codes`)."""

    tag = "test_codes"
    stages = ("test",)

    def applies(self, model) -> bool:
        return isinstance(model, AutoencoderBase) and model.n_embed > 0

    def draw(self, model, data):
        points, labels, images = codes(model, data, "test", model.n_embed)
        names = [str(data.classes[i]) for i in labels.tolist()]
        thumbs = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return points.cpu(), names, thumbs.cpu()

    def write(self, trainer, model, figure) -> None:
        points, names, thumbs = figure
        step = trainer.global_step
        for writer in viz.tensorboards(trainer):
            if (Path(writer.get_logdir()) / f"{step:05d}" / self.tag).exists():
                continue  # a finished run resumed and tested again: written at this step already
            writer.add_embedding(
                points, metadata=names, label_img=thumbs, global_step=step, tag=self.tag
            )


class HiddenActivations(FigureCallback):
    """`hidden_activations`: a histogram of the sparse code's units on 512 validation images."""

    tag = "hidden_activations"

    def applies(self, model) -> bool:
        return isinstance(model, SparseAE)

    def draw(self, model, data):
        x, _ = data.images("val", 512)
        return model.encode(x).flatten().cpu()

    def write(self, trainer, model, figure) -> None:
        for writer in viz.tensorboards(trainer):
            writer.add_histogram(self.full_tag, figure, trainer.global_step)


class PretrainReconstructions(FigureCallback):
    """`pretrain_reconstructions`: after greedy pre-training, the stack as a deep autoencoder."""

    tag = "pretrain_reconstructions"
    stages = ("train_start",)

    def applies(self, model) -> bool:
        return isinstance(model, StackedAE) and bool(model.pretrain_history)

    def draw(self, model, data):
        x, _ = data.images("val", model.n_log_images)
        return viz.paired_grid([x, model(x)], labels=("input", "pre-trained stack"))
