"""Datasets: real readers (IDX, CIFAR-10), the source fallback, and the tensor-resident loader."""

from nnlab.data.batches import TensorBatches
from nnlab.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule", "TensorBatches"]
