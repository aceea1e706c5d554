"""Shared test helpers: files in the real formats (IDX, CIFAR-10 batches) and an in-process
`nnlab train` that goes through the real Hydra entry point."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYTHONWARNINGS", "ignore")


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file exactly as LeCun's format defines it: magic (0, 0, type, ndim), big-endian
    dims, data."""
    array = np.ascontiguousarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_mnist_folder(
    folder: Path,
    n_train: int = 200,
    n_test: int = 60,
    size: int = 28,
    compress: bool = True,
    seed: int = 0,
) -> Path:
    """A tiny MNIST-format dataset (the four IDX files) with class-dependent images."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, size, size)) * 80).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose row depends on the class
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


def write_cifar_folder(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 python-batches folder (cifar-10-batches-py/data_batch_1..5, test_batch)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": [int(x) for x in rng.integers(0, 10, n_per_batch)],
            b"batch_label": name.encode(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return Path(root)


def run_train(tmp_path: Path, *overrides: str, name: str = "run") -> Path:
    """`nnlab train <overrides>` in this process (the real Hydra entry point); returns the run
    folder."""
    from nnlab.train import main

    run_dir = Path(tmp_path) / name
    argv = sys.argv
    extra = (
        []
        if any(o.startswith("callbacks=") for o in overrides)
        else ["callbacks.progress_bar.refresh_rate=0"]
    )
    sys.argv = ["nnlab train", *overrides, f"hydra.run.dir={run_dir}", *extra]
    try:
        main()
    finally:
        sys.argv = argv
    return run_dir


def run_fails(
    tmp_path: Path, capsys, *overrides: str, code: int = 2, name: str = "run"
) -> tuple[str, dict | None]:
    """`nnlab train <overrides>` that must end with exit `code` and no traceback: (its stderr, the
    run's metrics.json or None when the run never started)."""
    import pytest

    with pytest.raises(SystemExit) as exc:
        run_train(tmp_path, *overrides, name=name)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    path = Path(tmp_path) / name / "metrics.json"
    return err, (read_metrics(path.parent) if path.exists() else None)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def event_tags(run_dir: Path) -> dict:
    """Tags in the run's TensorBoard events, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture
def mnist_dir(tmp_path):
    return write_mnist_folder(tmp_path / "mnist")


FAST = ("dataset=synthetic", "debug=fast", "accelerator=cpu")
