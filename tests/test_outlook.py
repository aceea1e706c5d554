"""The outlook families end to end (capsnet, snn, lapgan): each trains on 3x32x32 images (28x28 is
in test_checkpoints' eval/sample test), logs its own figures under vis/ and its own scalars, and
continues with `nnlab train resume=RUN`; lapgan's LeNet-feature FID appears with a classifier."""

from __future__ import annotations

import math
import sys

import pytest
from conftest import FAST, event_tags, read_metrics, run_train

TINY = {
    "capsnet": ("model=capsnet", "model.conv_channels=8", "model.primary_caps=4"),
    "snn": ("model=snn", "model.hidden=[32]", "model.num_steps=5"),
    "snn_conv": ("model=snn", "model.arch=conv", "model.hidden=[4,8]", "model.num_steps=4"),
    "lapgan": (
        "model=lapgan",
        "model.g_dims=[[8],[8],[32]]",
        "model.d_dims=[[8,8],[8],[32]]",
        "model.n_log_images=16",
        "model.metrics.n_val_samples=64",
        "model.metrics.n_samples=128",
    ),
}
IMAGES = {
    "capsnet": {"vis/reconstructions", "vis/perturbations", "vis/errors", "vis/confusion_matrix"},
    "snn": {"vis/spike_raster", "vis/membrane", "vis/errors", "vis/confusion_matrix"},
    "snn_conv": {"vis/spike_raster", "vis/membrane"},
    "lapgan": {"vis/samples", "vis/pyramid"},
}
SCALARS = {
    "capsnet": ("test/acc", "test/margin", "test/recon", "train/margin"),
    "snn": ("test/acc", "test/rate/hidden1", "test/rate/output", "test/spikes_per_image"),
    "snn_conv": ("test/rate/hidden1", "test/rate/hidden2", "test/rate/output"),
    "lapgan": ("train/d_loss", "train/g_loss", "train/d_fake_32", "train/d_fake_8", "test/fid"),
}


def _resume(run, *overrides):
    from nnlab.train import main

    argv = sys.argv
    sys.argv = ["nnlab train", f"resume={run}", *overrides]
    try:
        main()
    finally:
        sys.argv = argv


@pytest.mark.parametrize("family", sorted(TINY))
def test_trains_on_32x32_colour_logs_its_figures_and_resumes(family, tmp_path):
    extra = ()
    if family == "lapgan":
        from test_gans import lenet_checkpoint

        ckpt = lenet_checkpoint(tmp_path / "lenet.ckpt", shape=(3, 32, 32))
        extra = (f"model.metrics.classifier_ckpt={ckpt}",)
    run = run_train(tmp_path, *FAST, *TINY[family], *extra, "dataset.shape=[3,32,32]", "threads=1")
    record = read_metrics(run)
    assert record["status"] == "finished" and record["global_step"] > 0
    for key in SCALARS[family]:
        assert math.isfinite(record["metrics"][key]), key
    if family.startswith("snn"):
        rates = [v for k, v in record["metrics"].items() if k.startswith("test/rate/")]
        assert rates and all(0 <= r <= 1 for r in rates)
    images = set(event_tags(run).Tags()["images"])
    assert IMAGES[family] <= images, IMAGES[family] - images

    step = record["global_step"]
    _resume(run, "trainer.max_epochs=2")
    again = read_metrics(run)
    assert again["status"] == "finished" and again["global_step"] > step
    assert len(again["resumes"]) == 1


# -- several optimizer steps per Lightning call (steps_per_execution) change no number -----------
STEPS = {
    "capsnet": ("model=capsnet", "model.conv_channels=8", "model.primary_caps=4"),  # shifts
    "snn": ("model=snn", "model.hidden=[16]", "model.num_steps=4"),  # rate coding's draws
    "lapgan": ("model=lapgan", "model.g_dims=[[8],[8],[16]]", "model.d_dims=[[8,8],[8],[16]]",
               "model.latent_dim=8", "model.d_steps=2", "model.ema=0.9"),  # G every 2nd batch
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(STEPS))
def test_four_steps_per_call_give_the_same_run(family, tmp_path, monkeypatch):
    from test_steps import NoHostReads, assert_same, csv_rows, train

    one, one_rec = train(tmp_path, "one", *STEPS[family], "steps_per_execution=1")
    detector = NoHostReads(monkeypatch)
    four, four_rec = train(tmp_path, "four", *STEPS[family], "steps_per_execution=4")
    assert detector.reads == [], f"host reads inside the step loop: {set(detector.reads)}"
    assert set(one_rec.calls) == {1} and 1 < max(four_rec.calls) <= 4
    assert [n for n, _ in one_rec.saved] == [n for n, _ in four_rec.saved]
    for (name, a), (_, b) in zip(one_rec.saved, four_rec.saved):
        assert_same(a, b, f"{name} at step {a['global_step']}")
    assert csv_rows(one) == csv_rows(four)
    assert read_metrics(one)["metrics"] == read_metrics(four)["metrics"]
