"""The real readers on small files in the real formats, the source fallback, the resident loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_cifar_folder, write_idx, write_mnist_folder

from nnlab.data import ImageDataModule, TensorBatches
from nnlab.data.readers import read_cifar_batch, read_idx
from nnlab.data.sources import load_splits, locate
from nnlab.errors import DataError


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_idx(tmp_path / "x-idx3-ubyte", images, compress)
    out = read_idx(path)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 4, 5)
    assert torch.equal(out, torch.from_numpy(images))


def test_idx_truncated_and_bad_magic(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "y").write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "y")


def test_cifar_reader(tmp_path):
    root = write_cifar_folder(tmp_path, n_per_batch=7)
    images, labels = read_cifar_batch(root / "cifar-10-batches-py" / "data_batch_1")
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (7,)
    splits = load_splits("cifar10", "cifar10", root / "cifar-10-batches-py")
    assert splits["train"][0].shape == (35, 3, 32, 32) and splits["test"][0].shape == (7, 3, 32, 32)


def test_cifar_reader_refuses_code(tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not a readable CIFAR-10"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_mnist_splits_in_torchvision_layout(tmp_path):
    write_mnist_folder(tmp_path / "MNIST" / "raw", n_train=30, n_test=10, compress=False)
    folder = locate("mnist", "idx", tmp_path, download=False, debian_dirs={})
    splits = load_splits("mnist", "idx", folder)
    assert splits["train"][0].shape == (30, 1, 28, 28) and splits["test"][1].shape == (10,)


def test_source_order_data_dir_first(tmp_path):
    mine = write_mnist_folder(tmp_path / "mine", n_train=20, n_test=5)
    debian = write_mnist_folder(tmp_path / "debian", n_train=20, n_test=5)
    assert locate("fashion_mnist", "idx", mine, False, {"fashion_mnist": debian}) == mine
    # data_dir empty: the Debian folder is next
    assert (
        locate("fashion_mnist", "idx", tmp_path / "empty", False, {"fashion_mnist": debian})
        == debian
    )


def test_source_download_is_last(tmp_path, monitor=None):
    import nnlab.data.sources as sources

    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        write_mnist_folder(root / "FashionMNIST" / "raw", n_train=10, n_test=5)
        return None

    original = sources._download
    sources._download = fake_download
    try:
        found = locate(
            "fashion_mnist", "idx", tmp_path / "d", True, {"fashion_mnist": tmp_path / "nope"}
        )
    finally:
        sources._download = original
    assert calls == [("fashion_mnist", tmp_path / "d")]
    assert found == tmp_path / "d" / "FashionMNIST" / "raw"


def test_missing_data_error_names_all_three_sources(tmp_path):
    with pytest.raises(DataError) as info:
        locate(
            "fashion_mnist",
            "idx",
            tmp_path / "nothing",
            False,
            {"fashion_mnist": tmp_path / "no-debian"},
        )
    msg = str(info.value)
    assert (
        "dataset.data_dir=" in msg
        and "no-debian" in msg
        and "apt-get install dataset-fashion-mnist" in msg
    )
    assert "torchvision's download" in msg and "dataset.download=false" in msg


def test_tensor_batches_cover_the_split_and_depend_on_seed_and_epoch():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    y = torch.arange(100)
    loader = TensorBatches(x, y, batch_size=32, shuffle=True, seed=1, epoch_fn=lambda: 0)
    seen = torch.cat([b[1] for b in loader])
    assert len(loader) == 4 and sorted(seen.tolist()) == list(range(100))
    again = torch.cat(
        [b[1] for b in TensorBatches(x, y, 32, shuffle=True, seed=1, epoch_fn=lambda: 0)]
    )
    other_epoch = torch.cat(
        [b[1] for b in TensorBatches(x, y, 32, shuffle=True, seed=1, epoch_fn=lambda: 1)]
    )
    assert torch.equal(seen, again) and not torch.equal(seen, other_epoch)
    assert len(TensorBatches(x, y, 32, shuffle=True, drop_last=True)) == 3


def test_tensor_batches_shard_per_rank_without_overlap():
    x = torch.zeros(103, 1, 1, 1, dtype=torch.uint8)
    y = torch.arange(103)
    shards = [
        torch.cat(
            [
                b[1]
                for b in TensorBatches(
                    x, y, 10, shuffle=True, seed=3, rank=r, world_size=2, epoch_fn=lambda: 5
                )
            ]
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 51
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_datamodule_split_is_seeded_and_normalises_per_batch(tmp_path):
    folder = write_mnist_folder(tmp_path / "m", n_train=100, n_test=20)
    dm = ImageDataModule(
        "mnist", data_dir=str(folder), download=False, val_fraction=0.2, split_seed=7, batch_size=16
    )
    dm.setup()
    assert (
        len(dm.raw("train")[0]) == 80
        and len(dm.raw("val")[0]) == 20
        and len(dm.raw("test")[0]) == 20
    )
    dm2 = ImageDataModule(
        "mnist", data_dir=str(folder), download=False, val_fraction=0.2, split_seed=7
    )
    dm2.setup()
    assert torch.equal(dm.raw("val")[1], dm2.raw("val")[1])
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())))
    assert (
        images.dtype == torch.float32
        and 0 <= images.min()
        and images.max() <= 1
        and images.shape == (16, 1, 28, 28)
    )


def test_shape_mismatch_is_a_clear_error(tmp_path):
    folder = write_mnist_folder(tmp_path / "m", n_train=20, n_test=5)
    dm = ImageDataModule("mnist", data_dir=str(folder), download=False, shape=(3, 32, 32))
    with pytest.raises(DataError, match="dataset.shape"):
        dm.setup()
