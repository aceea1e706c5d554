"""ImageDataModule: one datamodule for every image dataset (Fashion-MNIST, MNIST, CIFAR-10, digits,
synthetic).

Each split is loaded once as uint8, moved to the training device once, and served by
TensorBatches; `on_after_batch_transfer` turns a uint8 batch into floats in [0, 1] on the device,
after augmenting it when it is a training batch and `dataset.augment` asks for it (random shifts
and horizontal flips, nnlab/data/augment.py).
Models reach the images through the data face (`images`, `raw`: see ResidentDataModule).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from nnlab import lightning_compat as compat
from nnlab.data import augment as aug
from nnlab.data.batches import TensorBatches
from nnlab.data.digits import load_digits_splits, locate_digits
from nnlab.data.sources import load_splits, locate, synthetic_splits
from nnlab.errors import DataError, check_choice

FORMATS = ("idx", "cifar10", "digits", "synthetic")
SPLITS = ("train", "val", "test")


def float_images(images: torch.Tensor) -> torch.Tensor:
    """Stored images (uint8, 0..255) as floats in [0, 1]; floats pass through as float32. The one
    place nnlab converts pixels: batches, the data face and the streaming consumers all call it."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class ResidentDataModule(pl.LightningDataModule):
    """What every nnlab datamodule shares: its splits live on the training device and are served by
    TensorBatches (shuffled per epoch, one shard per DDP rank). Subclasses define `_batches(split,
    shuffle)` and set batch_size, eval_batch_size and seed.

    The data face - all a model, a figure callback or a metric may use (the storage is private):
        device                     where the splits live (the training device)
        batch_size, eval_batch_size
        the Lightning loaders      train/val/test_dataloader: batches already on the device, in the
                                   form the model's `step(batch, stage)` takes
        one accessor per kind of example, returning model-ready tensors on the device:
            images   ImageDataModule.images(split, n=None, label=None) -> (floats in [0, 1], labels)
                     plus raw(split) (the stored uint8 tensors, read-only) for consumers that stream
                     over a whole split (PCA fit, RBM biases) and convert chunks with float_images;
                     classes, num_classes, shape
            ratings  RatingsDataModule.ratings(split) -> CSR; n_users, n_items, levels, item_means
    A new kind of data (sequences, text) is one more subclass with its own accessor in the same
    style (e.g. sequences(split, n=None) -> (padded tensors, lengths); vocabulary), so that models
    never index a datamodule's storage or convert its dtype themselves."""

    @property
    def device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def resident_batches(
        self, items: torch.Tensor, labels: torch.Tensor, shuffle: bool, cls=TensorBatches, **extra
    ) -> TensorBatches:
        """`cls` (a TensorBatches) over the resident split; `extra` goes to its constructor."""
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return cls(
            items,
            labels,
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(items) // world > self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            **extra,
        )

    def train_dataloader(self):
        return self._batches("train", shuffle=True)

    def val_dataloader(self):
        return self._batches("val", shuffle=False)

    def test_dataloader(self):
        return self._batches("test", shuffle=False)


class ImageDataModule(ResidentDataModule):
    def __init__(
        self,
        name: str,
        format: str = "idx",
        data_dir: str = "data",
        download: bool = True,
        shape=(1, 28, 28),
        num_classes: int = 10,
        classes=None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        n_train: int = 512,
        n_test: int = 128,
        seed: int = 0,
        augment: dict | None = None,
    ):
        super().__init__()
        check_choice("dataset.format", format, FORMATS)
        self.augment = aug.check_spec(augment)  # {"pad": int, "hflip": bool}; training batches only
        self.name, self.format, self.data_dir, self.download = (
            name,
            format,
            Path(data_dir),
            download,
        )
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes else [str(i) for i in range(self.num_classes)]
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_fraction, self.split_seed, self.seed = (
            float(val_fraction),
            int(split_seed),
            int(seed),
        )
        self.n_train, self.n_test = int(n_train), int(n_test)
        self.folder: Path | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # uint8 images, labels

    # -- where the data comes from -------------------------------------------------------
    def prepare_data(self) -> None:
        if self.format == "digits" and self.folder is None:
            self.folder = locate_digits(self.data_dir)  # the file itself
        elif self.format != "synthetic" and self.folder is None:
            self.folder = locate(self.name, self.format, self.data_dir, self.download)

    def _load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.format == "synthetic":
            return synthetic_splits(
                self.shape, self.num_classes, self.n_train, self.n_test, self.split_seed
            )
        self.prepare_data()
        if self.format == "digits":
            return load_digits_splits(self.folder, self.shape)
        return load_splits(self.name, self.format, self.folder)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        raw = self._load()
        images, labels = raw["train"]
        if tuple(images.shape[1:]) != self.shape:
            raise DataError(
                f"The {self.name} files hold images of shape {list(images.shape[1:])}, but "
                f"dataset.shape is {list(self.shape)}. Point dataset.data_dir at the right dataset "
                "or fix dataset.shape."
            )
        n_val = int(round(len(images) * self.val_fraction))
        order = torch.randperm(
            len(images), generator=torch.Generator().manual_seed(self.split_seed)
        )
        device = self.device
        splits = {
            "train": (images[order[n_val:]], labels[order[n_val:]]),
            "val": (images[order[:n_val]], labels[order[:n_val]]),
            "test": raw["test"],
        }
        self._splits = {
            k: (x.to(device).contiguous(), y.to(device)) for k, (x, y) in splits.items()
        }

    # -- batches ---------------------------------------------------------------------------
    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        images, labels = self.raw(split)
        return self.resident_batches(images, labels, shuffle)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int = 0):
        """Batches already live on the training device: skip Lightning's generic collection walk."""
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        images, labels = batch
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and aug.is_active(self.augment):
            # seeded by the batch's place in the fit (a resumed run augments as the first did):
            # the step loop's count with several batches per call, else Lightning's, which still
            # names the previous batch while this one is transferred
            loop = getattr(getattr(trainer, "lightning_module", None), "_loop", None)
            index = loop.index if loop is not None else compat.batch_index(trainer) + 1
            g = aug.batch_generator(
                images.device, self.seed, trainer.current_epoch, index, trainer.global_rank
            )
            images = aug.augment(images, g, **self.augment)
        return float_images(images), labels

    # -- the data face -----------------------------------------------------------------------
    def raw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of a split as stored: uint8 (N, C, H, W) and int64 (N,), on the device.
        Read-only; for consumers that stream over a whole split (convert chunks with
        float_images)."""
        check_choice("split", split, SPLITS)
        self.setup()
        return self._splits[split]

    def images(
        self, split: str, n: int | None = None, label: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images of a split (of class `label` if given; all when n is None) as floats
        in [0, 1] on the device, with their labels: the same images every call."""
        images, labels = self.raw(split)
        if label is not None:
            keep = labels == int(label)
            images, labels = images[keep], labels[keep]
        return float_images(images[:n]), labels[:n]
