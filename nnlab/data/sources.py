"""Where the data comes from, in order: dataset.data_dir, Debian's package folder, torchvision's
download.

`locate()` returns the folder holding the files, or raises one DataError that names all three
sources and how to fix each. `load_splits()` reads the official train and test splits.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from nnlab.data.readers import read_cifar_batch, read_idx
from nnlab.errors import DataError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# `make data` unpacks data files shipped inside pinned pip wheels (aeon, statsmodels,
# scikit-learn...)
# into the venv: <venv>/share/nnlab/<package>-<version>/ (`make clean` removes them with the venv).
PACKAGED_DATA = Path(sys.prefix) / "share" / "nnlab"
# Debian's packages put real datasets here (apt-get install dataset-fashion-mnist).
DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
# torchvision's class and the sub-folder its download writes to.
TORCHVISION = {
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
    "mnist": ("MNIST", "MNIST/raw"),
    "cifar10": ("CIFAR10", CIFAR_DIR),
}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_files(folder: Path, fmt: str) -> bool:
    if fmt == "idx":
        return all(_idx_file(folder, stem) for pair in IDX_FILES.values() for stem in pair)
    return all((folder / f).is_file() for files in CIFAR_FILES.values() for f in files)


def _candidates(folder: Path, name: str, fmt: str) -> list[Path]:
    """The folder itself, and the layouts torchvision's downloads use below it."""
    subs = [folder]
    if fmt == "cifar10":
        subs.append(folder / CIFAR_DIR)
    if name in TORCHVISION:
        subs.append(folder / TORCHVISION[name][1])
    return subs


def _find(folder: Path, name: str, fmt: str) -> Path | None:
    return next(
        (c for c in _candidates(folder, name, fmt) if c.is_dir() and _has_files(c, fmt)), None
    )


def _download(name: str, root: Path) -> str | None:
    """torchvision's download into root; returns an error message, or None on success."""
    if name not in TORCHVISION:
        return f"torchvision has no download for '{name}'"
    raw = root / TORCHVISION[name][1]  # the folders a download makes, deepest first
    made = [p for p in (raw, *raw.parents) if not p.exists()]
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, TORCHVISION[name][0])
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
        return None
    except Exception as err:  # noqa: BLE001 - any failure (offline, checksum, disk) is reported
        for folder in made:  # a failed download leaves no empty ./data/MNIST/raw behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


def locate(
    name: str, fmt: str, data_dir: str | Path, download: bool = True, debian_dirs=None
) -> Path:
    """The folder with the dataset's files, trying the three sources in order."""
    data_dir = Path(data_dir).expanduser()
    debian_dirs = DEBIAN_DIRS if debian_dirs is None else debian_dirs
    found = _find(data_dir, name, fmt)
    if found:
        return found
    debian = debian_dirs.get(name)
    if debian is not None and (found := _find(Path(debian), name, fmt)):
        return found
    why = "dataset.download=false"
    if download:
        why = _download(name, data_dir)
        if why is None and (found := _find(data_dir, name, fmt)):
            return found
        why = why or "the download finished but the expected files are not there"
    files = (
        ", ".join(s + "[.gz]" for pair in IDX_FILES.values() for s in pair)
        if fmt == "idx"
        else (f"{CIFAR_DIR}/" + ", ".join(CIFAR_FILES["train"] + CIFAR_FILES["test"]))
    )
    debian_line = (
        f"(2) Debian's package folder {debian}: not there - install it with `apt-get install "
        f"dataset-{name.replace('_', '-')}` (as root; `make setup` does this);"
        if debian is not None
        else f"(2) Debian's package folder: Debian ships no package for {name};"
    )
    raise DataError(
        f"Dataset '{name}' not found. Tried, in order: (1) dataset.data_dir={data_dir.resolve()}: "
        f"no {files} there - copy the files in, or pass dataset.data_dir=/path/to/folder (or set "
        f"NNLAB_DATA_DIR); {debian_line} (3) torchvision's download: {why} - connect to the "
        "internet once and keep dataset.download=true."
    )


def load_splits(name: str, fmt: str, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train': (images uint8 NCHW, labels int64), 'test': (...)} from the official files."""
    splits = {}
    for split in ("train", "test"):
        if fmt == "idx":
            img_stem, lbl_stem = IDX_FILES[split]
            images, labels = (
                read_idx(_idx_file(folder, img_stem)),
                read_idx(_idx_file(folder, lbl_stem)),
            )
            if images.dim() == 3:
                images = images.unsqueeze(1)
            labels = labels.long()
        else:
            parts = [read_cifar_batch(folder / f) for f in CIFAR_FILES[split]]
            images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise DataError(
                f"{folder}: the {split} split has {len(images)} images of type {images.dtype} and "
                f"{len(labels)} labels; expected as many uint8 images as labels. The files are "
                "corrupt."
            )
        splits[split] = (images, labels)
    return splits


def synthetic_splits(shape, num_classes: int, n_train: int, n_test: int, seed: int):
    """Random images with class structure: each class has a random template, images are template +
    noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand((num_classes, *shape), generator=g)

    def make(n):
        labels = torch.randint(0, num_classes, (n,), generator=g)
        images = 0.7 * templates[labels] + 0.3 * torch.rand((n, *shape), generator=g)
        return (images * 255).round().to(torch.uint8), labels

    return {"train": make(n_train), "test": make(n_test)}
