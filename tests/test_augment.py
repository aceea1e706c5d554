"""On-device batch augmentation (nnlab/data/augment.py): shapes, dtypes, what a shift and a flip do
to known pixels, determinism under a seed, and the datamodule's `dataset.augment` (training
batches only, the same batches in a rerun, a config mistake caught before the run)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import FAST, read_metrics, run_fails, run_train

from nnlab.data.augment import augment, batch_generator, check_spec
from nnlab.data.datamodule import ImageDataModule
from nnlab.errors import ConfigError


def _batch(dtype=torch.uint8, b=64, c=1, h=8, w=6):
    x = torch.randint(1, 256, (b, c, h, w), generator=torch.Generator().manual_seed(1))
    return x.to(dtype) if dtype == torch.uint8 else x.to(dtype) / 255


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("c", [1, 3])
def test_shape_dtype_and_values_come_from_the_image(dtype, c):
    x = _batch(dtype, c=c)
    y = augment(x, batch_generator("cpu", 0, 0, 0), pad=2, hflip=True)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    # every output pixel is an input pixel of the same image and channel, or padding (0)
    for xi, yi in zip(x, y):
        for xc, yc in zip(xi, yi):
            assert set(yc.unique().tolist()) <= set(xc.unique().tolist()) | {0}


def test_off_returns_the_images_and_draws_nothing():
    x, g = _batch(), batch_generator("cpu", 0, 0, 0)
    state = g.get_state()
    assert augment(x, g) is x
    assert torch.equal(g.get_state(), state)


def test_every_image_is_a_shift_of_itself_by_at_most_pad():
    pad = 2
    x = _batch()  # no zeros inside: a zero in the output is padding
    y = augment(x, batch_generator("cpu", 3, 1, 7), pad=pad)
    shifts = set()
    for xi, yi in zip(x, y):
        found = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(yi, _shifted(xi, dy, dx))
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # 64 images draw many of the 25 shifts, not one for the batch


def test_hflip_mirrors_about_half_of_the_images_and_nothing_else():
    x = _batch(b=400)
    y = augment(x, batch_generator("cpu", 0, 0, 0), hflip=True)
    mirrored = torch.tensor([torch.equal(yi, xi.flip(-1)) for xi, yi in zip(x, y)])
    same = torch.tensor([torch.equal(yi, xi) for xi, yi in zip(x, y)])
    assert bool((mirrored | same).all())
    assert 150 < int(mirrored.sum()) < 250


def test_the_same_seed_gives_the_same_batch_and_another_position_another():
    x = _batch(torch.float32)
    a = augment(x, batch_generator("cpu", 5, 2, 9), pad=2, hflip=True)
    b = augment(x, batch_generator("cpu", 5, 2, 9), pad=2, hflip=True)
    assert torch.equal(a, b)
    for other in [(6, 2, 9, 0), (5, 3, 9, 0), (5, 2, 10, 0), (5, 2, 9, 1)]:
        assert not torch.equal(a, augment(x, batch_generator("cpu", *other), pad=2, hflip=True))


def test_the_spec_is_checked():
    assert check_spec(None) == {"pad": 0, "hflip": False}
    assert check_spec({"pad": 2, "hflip": True}) == {"pad": 2, "hflip": True}
    for bad in [{"pad": -1}, {"pad": 1.5}, {"pad": True}, {"hflip": "yes"}, {"shift": 2}]:
        with pytest.raises(ConfigError, match="dataset.augment"):
            check_spec(bad)


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img moved down by dy and right by dx (negative: up/left), zeros coming in."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    src = img[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[:, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] = src
    return out


def _datamodule(**augment_spec) -> ImageDataModule:
    dm = ImageDataModule(
        "synthetic", format="synthetic", n_train=64, n_test=16, seed=3, augment=augment_spec or None
    )
    dm.setup()
    return dm


def _fake_trainer(training: bool, epoch: int = 0, batch: int = 0):
    """What on_after_batch_transfer reads of a Trainer: the stage, the epoch and the batch count."""
    loop = SimpleNamespace(total_batch_idx=batch)
    return SimpleNamespace(training=training, current_epoch=epoch, global_rank=0, fit_loop=loop)


def test_the_datamodule_augments_training_batches_only():
    dm = _datamodule(pad=2, hflip=True)
    images, labels = dm.raw("train")
    batch = (images[:32], labels[:32])
    plain = images[:32].float() / 255
    dm.trainer = _fake_trainer(training=False)
    x, y = dm.on_after_batch_transfer(batch)
    assert torch.equal(x, plain) and torch.equal(y, labels[:32])  # validation, test: untouched
    dm.trainer = _fake_trainer(training=True, epoch=1, batch=5)
    x, y = dm.on_after_batch_transfer(batch)
    assert x.shape == plain.shape and x.dtype == torch.float32 and torch.equal(y, labels[:32])
    assert not torch.equal(x, plain)
    again, _ = dm.on_after_batch_transfer(batch)  # the same place in the run: the same batch
    assert torch.equal(x, again)
    dm.trainer = _fake_trainer(training=True, epoch=1, batch=6)
    assert not torch.equal(x, dm.on_after_batch_transfer(batch)[0])


def test_augmentation_is_off_by_default():
    dm = _datamodule()
    images, labels = dm.raw("train")
    dm.trainer = _fake_trainer(training=True)
    x, _ = dm.on_after_batch_transfer((images[:8], labels[:8]))
    assert torch.equal(x, images[:8].float() / 255)


def test_a_run_with_augmentation_is_repeatable(tmp_path):
    aug = (
        "model=lenet",
        *FAST,
        "logger=none",
        "dataset.augment.pad=2",
        "dataset.augment.hflip=true",
    )
    losses = [
        read_metrics(run_train(tmp_path, *aug, name=name))["metrics"]["train/loss"]
        for name in ("a", "b")
    ]
    assert losses[0] == losses[1]


def test_a_bad_augment_value_stops_before_training(tmp_path, capsys):
    err, record = run_fails(tmp_path, capsys, "model=lenet", *FAST, "dataset.augment.pad=-2")
    assert "dataset.augment.pad=-2 is not valid" in err
    assert record is None  # caught before the run folder exists
