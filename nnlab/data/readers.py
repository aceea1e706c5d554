"""Readers for the real on-disk formats: IDX (the MNIST family) and the CIFAR-10 python batches.

Both return uint8 tensors: images (N, C, H, W) and int64 labels (N,).
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from nnlab.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except PermissionError as err:  # not damaged: only unreadable for this user
        raise DataError(
            f"Cannot read {path}: permission denied ({err.strerror}). The file may be fine: make "
            "it readable for this user (chmod a+r), or copy the dataset into a folder you own and "
            "point dataset.data_dir at it."
        ) from err
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"Cannot read {path}: {err}. The file is truncated or corrupt; delete it and let nnlab "
            "fetch it again (or copy a good one into dataset.data_dir)."
        ) from err


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (optionally gzip-compressed) into a tensor of its stored shape."""
    path = Path(path)
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}). Point "
            "dataset.data_dir at the original MNIST-format files (train-images-idx3-ubyte[.gz] "
            "...)."
        )
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    dims = (
        tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
        if len(data) >= header
        else ()
    )
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(dims) != ndim or len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: its header promises {expected} bytes, the file has "
            f"{len(data)}. Delete it and let nnlab fetch it again, or copy a good one into "
            "dataset.data_dir."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only the numpy classes they hold, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch: (N, 3, 32, 32) uint8 images and int64 labels."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            batch = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    except (OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as err:
        raise DataError(
            f"{path} is not a readable CIFAR-10 python batch ({type(err).__name__}: {err}). Use "
            "the original cifar-10-python.tar.gz contents (data_batch_1..5, test_batch)."
        ) from err
    if len(images) != len(labels):
        raise DataError(
            f"{path}: {len(images)} images but {len(labels)} labels; the batch is corrupt."
        )
    return images, torch.from_numpy(labels)
