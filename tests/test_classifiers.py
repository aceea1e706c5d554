"""The classifier family: LeNet-5 (both variants) and the RNN/GRU/LSTM row reader end to end on
synthetic 1x28x28 and 3x32x32 data, LeNet-5's layer shapes and parameter count, the errors grid's
labels, and load_classifier (the FID feature extractor) on a finished run."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, event_tags, read_metrics, run_train

from nnlab.errors import CheckpointError, ConfigError
from nnlab.models.classifiers import (
    LeNet,
    error_labels,
    load_classifier,
    pick_errors,
)
from nnlab.models.sequences import SequenceClassifier
from nnlab.nets.lenet import LeNet5
from nnlab.nets.sequence import SequenceNet
from nnlab.viz import errors_grid

COLOUR = ("dataset.shape=[3,32,32]",)


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """One finished tiny LeNet run (modern variant, 1x28x28), shared by the tests below."""
    return run_train(tmp_path_factory.mktemp("lenet"), "model=lenet", *FAST)


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("lstm"), "model=lstm", "model.hidden_size=32", *FAST)


# -- LeNet-5 -------------------------------------------------------------------------------------
def test_lenet5_layer_shapes_and_parameter_count():
    net = LeNet5((1, 28, 28), 10, "modern")
    assert (
        sum(p.numel() for p in net.parameters()) == 61_706
    )  # LeCun et al.'s layer sizes, 10 classes
    shapes = {}
    for name in ("c1", "s2", "c3", "s4", "f5", "f6", "out"):
        getattr(net, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))
        )
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert shapes == {
        "c1": (2, 6, 28, 28),
        "s2": (2, 6, 14, 14),
        "c3": (2, 16, 10, 10),
        "s4": (2, 16, 5, 5),
        "f5": (2, 120),
        "f6": (2, 84),
        "out": (2, 10),
    }
    assert net.features(torch.rand(3, 1, 28, 28)).shape == (3, 84)
    # colour 32x32 needs no padding; only C1 grows (2 more input channels of 6 5x5 kernels)
    colour = LeNet5((3, 32, 32), 10, "classic")
    assert sum(p.numel() for p in colour.parameters()) == 61_706 + 2 * 6 * 25
    assert isinstance(colour.s2, torch.nn.AvgPool2d) and isinstance(colour.act, torch.nn.Tanh)
    assert isinstance(net.s2, torch.nn.MaxPool2d) and isinstance(net.act, torch.nn.ReLU)


@pytest.mark.parametrize(
    "cell,shape", [("lstm", (3, 32, 32)), ("gru", (1, 28, 28)), ("rnn", (3, 32, 32))]
)
def test_sequence_net_reads_rows(cell, shape):
    net = SequenceNet(
        shape, 10, cell=cell, hidden_size=16, num_layers=2, bidirectional=True, dropout=0.1
    )
    c, h, w = shape
    assert net.rnn.input_size == c * w  # one step = one row with all its channels
    x = torch.rand(4, *shape)
    rows = SequenceNet.rows(x)
    assert rows.shape == (4, h, c * w)
    assert (
        torch.equal(rows[1, 5, w : 2 * w], x[1, 1, 5])
        if c > 1
        else torch.equal(rows[1, 5], x[1, 0, 5])
    )
    logits = net(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


# -- end to end: debug=fast through the real entry point --------------------------------------
def test_lenet_run_metrics_images_and_scalars(lenet_run):
    record = read_metrics(lenet_run)
    assert record["status"] == "finished"
    metrics = record["metrics"]
    for key in ("train/loss", "train/grad_norm", "val/acc", "val/loss", "test/acc", "test/loss"):
        assert key in metrics, key
    per_class = {k: v for k, v in metrics.items() if k.startswith("test/acc_class/")}
    assert len(per_class) == 10 and all(0 <= v <= 1 for v in per_class.values())
    tags = event_tags(lenet_run).Tags()
    assert {"vis/errors", "vis/confusion_matrix"} <= set(tags["images"])
    assert {"train/loss", "train/grad_norm", "val/acc", "test/acc"} <= set(tags["scalars"])


# (no TensorBoard here, so no lr monitor: the images and scalars are checked on the two runs above)
@pytest.mark.parametrize(
    "overrides",
    [
        (
            "experiment=lenet_fashion",
            "model.variant=classic",
            *COLOUR,
        ),  # also the one-cycle schedule (total_steps: auto)
        (
            "model=lstm",
            "model.cell=gru",
            "model.bidirectional=true",
            "model.num_layers=2",
            "model.dropout=0.1",
            "model.hidden_size=16",
            *COLOUR,
        ),
        ("model=lstm", "model.cell=rnn", "model.hidden_size=16"),
    ],
    ids=["lenet-classic-onecycle-3x32", "gru-bidirectional-3x32", "rnn-1x28"],
)
def test_fast_runs(tmp_path, overrides):
    record = read_metrics(
        run_train(tmp_path, *overrides, *FAST, "logger=none", "~callbacks.lr_monitor")
    )
    assert record["status"] == "finished", record.get("error")
    assert 0 <= record["metrics"]["test/acc"] <= 1


def test_lstm_run_clips_by_default_and_logs_grad_norm(lstm_run):
    record = read_metrics(lstm_run)
    assert record["status"] == "finished" and "test/acc" in record["metrics"]
    assert "train/grad_norm" in event_tags(lstm_run).Tags()["scalars"]
    model = SequenceClassifier("lstm", gradient_clip_val=1.0)
    assert model.default_clip == 1.0 and model.net.rnn.mode == "LSTM"


def test_bad_model_options_are_config_errors():
    with pytest.raises(ConfigError, match="model.cell"):
        SequenceClassifier("lstm", cell="transformer")
    with pytest.raises(ConfigError, match="model.variant"):
        LeNet("lenet", variant="vintage")


# -- the errors grid ---------------------------------------------------------------------------
def test_errors_grid_labels_match_predictions():
    images = torch.arange(5).float().view(5, 1, 1, 1).expand(5, 1, 4, 4) / 10
    targets = torch.tensor([0, 1, 2, 3, 1])
    preds = torch.tensor([0, 2, 2, 1, 0])
    classes = ["Coat", "Shirt", "Bag", "Sandal"]
    x, t, p = pick_errors(images, targets, preds, n=10)
    assert torch.equal(x, images[[1, 3, 4]])  # only the misclassified, in order
    assert error_labels(t, p, classes) == ["Shirt->Bag", "Sandal->Shirt", "Shirt->Coat"]
    x, t, p = pick_errors(images, targets, preds, n=2)  # at most n
    assert error_labels(t, p, classes) == ["Shirt->Bag", "Sandal->Shirt"]
    grid = errors_grid(x, error_labels(t, p, classes))
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    assert (
        pick_errors(images, targets, targets, n=5)[0].shape[0] == 0
    )  # nothing wrong, nothing picked
    assert errors_grid(images[:0], []).shape[0] == 3


def test_sample_grid_is_the_errors_grid_on_test_images(lenet_run):
    class Data:  # the data face that sample_grid uses
        classes = [str(i) for i in range(10)]
        x, y = torch.rand(40, 1, 28, 28), torch.arange(40) % 10

        def images(self, split, n=None, label=None):
            keep = self.y == label if label is not None else slice(None)
            return self.x[keep][:n], self.y[keep][:n]

    model = load_classifier(lenet_run)
    image = model.sample_grid(n=8, datamodule=Data())
    assert image.dim() == 3 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
    assert model.sample_grid(n=4, label=3, datamodule=Data()).shape[0] == 3
    with pytest.raises(ConfigError):
        model.sample_grid(interpolate=True, datamodule=Data())


# -- load_classifier: the feature extractor for FID ---------------------------------------------
def test_load_classifier_from_run_folder_and_ckpt(lenet_run):
    model = load_classifier(lenet_run)
    assert isinstance(model, LeNet) and not model.training
    x = torch.rand(3, 1, 28, 28)
    assert model.features(x).shape == (3, 84)
    ckpts = sorted((lenet_run / "checkpoints").glob("*.ckpt"))
    again = load_classifier(ckpts[0])
    assert torch.allclose(again(x), load_classifier(ckpts[0])(x))


def test_load_classifier_clean_errors(tmp_path, lstm_run):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_classifier(bogus)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_classifier(tmp_path)
    with pytest.raises(CheckpointError, match="'lstm' model, not a LeNet-5"):
        load_classifier(lstm_run)
