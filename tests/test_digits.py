"""scikit-learn's digits file, read by the real reader from tiny files in its exact format."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from nnlab.data import ImageDataModule
from nnlab.data.digits import N_TRAIN, locate_digits, read_digits_csv, upsample
from nnlab.errors import DataError


def write_digits(path, n=20, seed=0, compress=True):
    """digits.csv.gz as scikit-learn ships it: 64 integer counts 0..16 and the label, per line."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 17, (n, 64))
    labels = np.arange(n) % 10
    text = "\n".join(",".join(str(v) for v in [*p, c]) for p, c in zip(pixels, labels)) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return pixels, labels


@pytest.mark.parametrize("compress", [True, False])
def test_reader_scales_counts_to_bytes(tmp_path, compress):
    pixels, labels = write_digits(tmp_path / "digits.csv.gz", compress=compress)
    images, got = read_digits_csv(tmp_path / "digits.csv.gz")
    assert images.dtype == torch.uint8 and images.shape == (20, 1, 8, 8)
    assert torch.equal(got, torch.from_numpy(labels))
    # count 16 -> 255, 0 -> 0, 8 -> 128 (row-major: pixel (r, c) is column 8 r + c)
    want = np.round(pixels * 255 / 16).astype(np.uint8).reshape(20, 1, 8, 8)
    assert torch.equal(images, torch.from_numpy(want))


def test_reader_rejects_other_files(tmp_path):
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="not scikit-learn's digits file"):
        read_digits_csv(tmp_path / "bad.csv")
    (tmp_path / "trunc.csv.gz").write_bytes(gzip.compress(b"0," * 64 + b"3\n")[:-6])
    with pytest.raises(DataError, match="Cannot read"):
        read_digits_csv(tmp_path / "trunc.csv.gz")


def test_upsample_keeps_constant_images_and_range():
    images = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    big = upsample(images, 28, 28)
    assert big.shape == (2, 1, 28, 28) and big.dtype == torch.uint8 and bool((big == 200).all())
    assert upsample(images, 8, 8) is images


def test_locate_names_every_source(tmp_path):
    with pytest.raises(DataError) as err:
        locate_digits(tmp_path / "nothing", packaged=tmp_path / "pkg")
    text = str(err.value)
    assert "dataset.data_dir" in text and "make data" in text and "no download" not in text
    assert str(tmp_path / "pkg") in text
    (tmp_path / "pkg").mkdir()
    write_digits(tmp_path / "pkg" / "digits.csv.gz")
    assert locate_digits(tmp_path / "nothing", packaged=tmp_path / "pkg").parent == tmp_path / "pkg"


def test_datamodule_serves_digits_at_the_fashion_shape(tmp_path):
    write_digits(tmp_path / "digits.csv.gz", n=N_TRAIN + 30)
    dm = ImageDataModule(
        "digits", format="digits", data_dir=str(tmp_path), shape=(1, 28, 28), val_fraction=0.1
    )
    dm.setup()
    x, y = dm.images("test", 30)
    assert x.shape == (30, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(dm.raw("train")[0]) + len(dm.raw("val")[0]) == N_TRAIN
    bad = ImageDataModule("digits", format="digits", data_dir=str(tmp_path), shape=(3, 28, 28))
    with pytest.raises(DataError, match="greyscale"):
        bad.setup()
