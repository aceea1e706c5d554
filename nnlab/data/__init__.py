"""Datasets: real readers (IDX, CIFAR-10), the source fallback, and the tensor-resident loader."""

from nnlab.data.batches import TensorBatches
from nnlab.data.datamodule import ImageDataModule
from nnlab.data.ratings import RatingsDataModule

__all__ = ["ImageDataModule", "RatingsDataModule", "TensorBatches"]
