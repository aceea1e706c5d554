"""scikit-learn's bundled `digits`: 1,797 handwritten digits of 8x8 pixels (the UCI "Optical
Recognition of Handwritten Digits" test set, Alpaydin & Kaynak 1998), offline and real - the
out-of-distribution set next to Fashion-MNIST (`dataset=digits`).

The file is sklearn/datasets/data/digits.csv.gz inside the scikit-learn wheel: one image a line,
64 pixel counts in 0..16 (row-major, ink is high) and the label as the 65th value. `make data`
unpacks it from the pinned wheel (`pip download --no-deps scikit-learn==SKLEARN_VERSION`) into
PACKAGED_DATA/scikit-learn-SKLEARN_VERSION/; scikit-learn itself is never imported.

Images become uint8 in 0..255 (count * 255 / 16) and are upsampled bilinearly to the dataset's
shape (28x28 by default), so a Fashion-MNIST model reads them as they are. Splits as in
scikit-learn's digits classification example: the first half for training, the second for test.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnlab.data.sources import PACKAGED_DATA
from nnlab.errors import DataError

SKLEARN_VERSION = "1.7.2"  # the wheel `make data` unpacks the file from (Makefile: SKLEARN_VERSION)
FILES = ("digits.csv.gz", "digits.csv")
SIDE, LEVELS = 8, 16  # 8x8 images of counts 0..16
# the first half trains (as scikit-learn's example: train_test_split(test_size=0.5, shuffle=False))
N_TRAIN = 898


def packaged_dir() -> Path:
    return PACKAGED_DATA / f"scikit-learn-{SKLEARN_VERSION}"


def read_digits_csv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """digits.csv[.gz] -> (images uint8 (N, 1, 8, 8) in 0..255, labels int64 (N,))."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("ascii")
        table = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, gzip.BadGzipFile) as err:
        raise DataError(
            f"Cannot read {path} as scikit-learn's digits.csv.gz ({type(err).__name__}: {err}). "
            "The file is truncated or not that file; delete it and run `make data` again."
        ) from err
    pixels, labels = table[:, :-1], table[:, -1]
    if (
        table.shape[1] != SIDE * SIDE + 1
        or pixels.min(initial=0) < 0
        or pixels.max(initial=0) > LEVELS
        or not np.all(labels == np.round(labels))
        or labels.min(initial=0) < 0
        or labels.max(initial=0) > 9
    ):
        raise DataError(
            f"{path} is not scikit-learn's digits file: expected lines of 64 counts in "
            f"0..{LEVELS} and a label 0..9, found {table.shape[1]} columns. Delete it and run "
            "`make data` again."
        )
    images = np.round(pixels * (255.0 / LEVELS)).astype(np.uint8).reshape(-1, 1, SIDE, SIDE)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def upsample(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, height, width), bilinear (as is when the sizes match)."""
    if tuple(images.shape[2:]) == (height, width):
        return images
    big = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def locate_digits(data_dir: str | Path, packaged: Path | None = None) -> Path:
    """The digits file: in dataset.data_dir, else in the folder `make data` unpacks it to."""
    data_dir = Path(data_dir).expanduser()
    packaged = packaged_dir() if packaged is None else Path(packaged)
    for folder in (data_dir, data_dir / "digits", packaged):
        for name in FILES:
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        "Dataset 'digits' not found. Tried, in order: "
        f"(1) dataset.data_dir={data_dir.resolve()}: no digits.csv.gz there (nor in digits/) - "
        "copy sklearn/datasets/data/digits.csv.gz of any scikit-learn wheel there, or pass "
        "dataset.data_dir=/path/to/folder; "
        f"(2) {packaged}: not there - run `make data`, which unpacks it from the pinned wheel "
        f"(pip download --no-deps scikit-learn=={SKLEARN_VERSION}; needs the package registry "
        "once); "
        "(3) a download: there is none for digits (it ships inside scikit-learn's wheel)."
    )


def load_digits_splits(
    path: Path, shape=(1, 28, 28)
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train': first 898 images, 'test': the last 899}, upsampled to `shape` (C, H, W)."""
    channels, height, width = (int(s) for s in shape)
    if channels != 1:
        raise DataError(
            f"digits are greyscale (1 channel) but dataset.shape is {list(shape)}; "
            "use dataset.shape=[1,28,28] (or [1,8,8] for the native size)."
        )
    images, labels = read_digits_csv(path)
    images = upsample(images, height, width)
    return {
        "train": (images[:N_TRAIN], labels[:N_TRAIN]),
        "test": (images[N_TRAIN:], labels[N_TRAIN:]),
    }
