"""The recurrent family: packed nets, truncated BPTT, the unrolled diagnostics, the forecasting
baselines in closed form, and the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import event_tags, read_metrics, run_fails, run_train

from nnlab.data.sequences import ForecastSeries, bucket_order, channel_stats, pad_sequences
from nnlab.errors import ConfigError
from nnlab.metrics import forecast as F
from nnlab.nets.sequence import CELLS, ForecastNet, SequenceNet, last_layer_state, run, unroll
from nnlab.viz.sequences import forecast_image, gates_image, grad_flow_image, nice_ticks


def _padded(b=4, t=9, f=5, lengths=(9, 3, 6, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g)
    lengths = torch.tensor(lengths)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, lengths


# -- packing: padding never changes the answer -------------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_logits(cell, bidirectional):
    torch.manual_seed(0)
    net = SequenceNet([5], 3, cell=cell, hidden_size=8, num_layers=2, bidirectional=bidirectional)
    net.eval()
    x, lengths = _padded()
    logits = net(x, lengths)
    more = torch.cat([x, torch.randn(4, 7, 5)], dim=1)  # longer padding, and not even zeros
    torch.testing.assert_close(net(more, lengths), logits)
    alone = net(x[2:3, :6], lengths[2:3])  # the sequence on its own, no padding at all
    torch.testing.assert_close(alone[0], logits[2], rtol=1e-5, atol=1e-6)


def test_images_are_still_read_row_by_row_with_the_old_keys():
    net = SequenceNet((1, 28, 28), 10, cell="lstm", hidden_size=16)
    assert sorted(net.state_dict()) == sorted(
        ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]
        + ["head.weight", "head.bias"]
    )
    x = torch.rand(3, 1, 28, 28)
    rows = (SequenceNet.rows(x) - 0.5) / 0.5
    _, (h_n, _) = net.rnn(rows)
    torch.testing.assert_close(net(x), net.head(h_n[-1]))


# -- truncated BPTT ---------------------------------------------------------------------------
def test_tbptt_keeps_the_forward_pass_and_cuts_the_gradient():
    torch.manual_seed(0)
    net = SequenceNet([5], 3, cell="gru", hidden_size=8).eval()
    x, lengths = _padded()
    torch.testing.assert_close(net(x, lengths, tbptt=2), net(x, lengths))
    x = x.clone().requires_grad_(True)
    net(x, lengths, tbptt=4).sum().backward()
    # sequence 0 (length 9) ends in the chunk [8, 9): no gradient reaches steps 0..7
    assert x.grad[0, :8].abs().sum() == 0 and x.grad[0, 8].abs().sum() > 0
    # sequence 2 (length 6) ends in the chunk [4, 8): steps 4 and 5 get gradient, 0..3 none
    assert x.grad[2, :4].abs().sum() == 0 and x.grad[2, 4:6].abs().sum() > 0
    x.grad = None
    net(x, lengths).sum().backward()  # untruncated: the gradient reaches the first step
    assert x.grad[0, 0].abs().sum() > 0


def test_forecast_net_many_to_many_and_tbptt_state():
    net = ForecastNet(2, horizon=3, cell="lstm", hidden_size=6)
    x = torch.randn(2, 10, 2)
    out, state = net(x)
    assert out.shape == (2, 10, 3) and state[0].shape == (1, 2, 6)
    chunked, _ = net(x, tbptt=4)
    torch.testing.assert_close(chunked, out)


# -- BPTT you can see -------------------------------------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
def test_unroll_is_the_same_network_step_by_step(cell):
    torch.manual_seed(1)
    net = SequenceNet([5], 3, cell=cell, hidden_size=7, num_layers=2, bidirectional=True).eval()
    x, lengths = _padded()
    out, state = run(net.rnn, x, lengths)
    out2, state2, states, gates = unroll(net.rnn, x, lengths)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(net.head(last_layer_state(net.rnn, state2)), net(x, lengths))
    assert len(states) == 9 and states[0].shape == (4, 7)
    assert set(gates) == {
        "lstm": {"input", "forget", "cell", "output"},
        "gru": {"reset", "update", "new"},
    }.get(cell, set())
    for name, g in gates.items():
        assert g.shape == (4, 9, 7)
        if name not in ("cell", "new"):
            assert 0 <= g.min() and g.max() <= 1  # sigmoid gates


def test_grad_wrt_each_hidden_state_matches_the_chain_rule():
    """For a linear 1-unit RNN h_t = w h_{t-1} + x_t (relu on positives) and L = h_T,
    dL/dh_t = w^(T-t): the picture's y values decay geometrically for |w| < 1."""
    rnn = torch.nn.RNN(1, 1, nonlinearity="relu", batch_first=True, bias=False)
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(1.0)
        rnn.weight_hh_l0.fill_(0.5)
    x = torch.ones(1, 6, 1)
    _, h_n, states, _ = unroll(rnn, x)
    grads = torch.autograd.grad(h_n.sum(), states)
    torch.testing.assert_close(
        torch.stack([g.flatten() for g in grads]).flatten(), 0.5 ** torch.arange(5, -1, -1.0)
    )


# -- forecasting: spans and baselines in closed form --------------------------------------------
def test_origins_cover_the_span_once():
    y = torch.arange(20.0)
    assert F.origins(12, 20, 3) == [12, 15, 18]
    targets = F.span_targets(y, 12, 20, 3)
    assert targets[:2].flatten().tolist() == list(range(12, 18))
    assert targets[2, :2].tolist() == [18, 19] and torch.isnan(targets[2, 2])


def test_baselines_closed_form():
    season = torch.tensor([1.0, 5.0, 3.0, 2.0])
    y = season.repeat(5) + torch.arange(20.0) * 0  # a pure period-4 season
    o = F.origins(12, 20, 4)
    torch.testing.assert_close(F.seasonal_naive(y, o, 4, 4), season.repeat(2, 1))
    torch.testing.assert_close(F.seasonal_naive(y, [12], 6, 4), season[[0, 1, 2, 3, 0, 1]][None])
    assert F.persistence(y, [12], 3).tolist() == [[2.0, 2.0, 2.0]]
    # an AR(2) recursion is recovered exactly and forecast recursively
    ar = [0.0, 1.0]
    for _ in range(40):
        ar.append(0.5 + 0.6 * ar[-1] - 0.3 * ar[-2])
    ar = torch.tensor(ar, dtype=torch.float64)
    coef = F.fit_ar(ar[:30], 2)
    torch.testing.assert_close(coef, torch.tensor([0.5, 0.6, -0.3], dtype=torch.float64))
    torch.testing.assert_close(F.ar_forecast(ar, coef, [30], 5)[0], ar[30:35])
    errs = F.errors(torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, float("nan")]]))
    assert errs["mae"] == 1 and errs["rmse"] == 1 and errs["mape"] == 100


# -- the figures ------------------------------------------------------------------------------
def test_figures_are_images():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    x = np.arange(48)
    img = forecast_image(x, np.sin(x / 3) + 2, 36, {"lstm": np.ones(12), "ar9": np.zeros(12)})
    assert img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1 and img.std() > 0
    flow = grad_flow_image({"rnn": 0.5 ** np.arange(30.0)[::-1], "lstm": np.ones(30)})
    assert flow.shape[0] == 3 and flow.std() > 0
    gates = {k: np.random.rand(20, 8) for k in ("input", "forget", "cell", "output")}
    img = gates_image(np.random.randn(20, 3), gates)
    assert img.shape[0] == 3 and img.shape[1] > 200


# -- the data tools ---------------------------------------------------------------------------
def test_padding_stats_and_bucketing():
    series = [np.ones((3, 2)), 3 * np.ones((1, 2)), np.zeros((5, 2))]
    x, lengths = pad_sequences(series)
    assert x.shape == (3, 5, 2) and lengths.tolist() == [3, 1, 5] and x[1, 1:].abs().sum() == 0
    mean, _ = channel_stats(x, lengths)  # padding excluded: (3*1 + 1*3 + 5*0) / 9
    torch.testing.assert_close(mean, torch.full((2,), 6 / 9))
    lengths = torch.randint(1, 100, (50,))
    order = torch.randperm(50)
    bucketed = bucket_order(order, lengths, 10)
    assert sorted(bucketed.tolist()) == list(range(50))
    for part, orig in zip(bucketed.split(10), order.split(10)):
        assert set(part.tolist()) == set(orig.tolist())  # the same items per chunk, by length
        assert (lengths[part].diff() >= 0).all()


def test_forecast_series_scales_on_train_only_and_inverts():
    values = np.exp(np.linspace(4, 6, 60)) * (1.2 + np.sin(np.arange(60) * np.pi / 6))
    series = ForecastSeries(
        "s", values, window=8, horizon=5, val_size=10, test_size=10, transform="log", relative=True
    )
    changed = values.copy()
    changed[-10:] *= 100  # the test span does not move the scaling
    other = ForecastSeries("s", changed, 8, 5, 10, 10, "log", True)
    assert (other.mean, other.scale) == (series.mean, series.scale)
    ends = series.train_ends()
    inputs, targets = series.windows(ends)
    assert inputs.shape == (len(ends), 8, 1) and targets.shape == (len(ends), 8, 5)
    assert int(ends.max()) + 5 < series.val_start and not torch.isnan(targets).any()
    o = series.origins("test")
    assert o == [50, 55]
    ahead = torch.tensor(o).unsqueeze(1) + torch.arange(5)
    perfect = series.z[ahead] - series.z[torch.tensor(o) - 1].unsqueeze(1)
    truth = F.span_targets(series.y, 50, 60, 5)
    torch.testing.assert_close(series.to_values(perfect, o), truth, rtol=1e-4, atol=0)


def test_forecast_series_config_mistakes():
    values = np.arange(1.0, 41.0)
    with pytest.raises(ConfigError, match="dataset.window=30 \\+ dataset.horizon=5"):
        ForecastSeries("s", values, 30, 5, 5, 5)
    with pytest.raises(ConfigError, match="dataset.transform=log"):
        ForecastSeries("s", values - 1, 4, 1, 5, 5, transform="log")


# -- end to end through the real entry point: .ts files and a CSV in their real formats ------------
def write_ts(folder, name="Tiny", n_train=36, n_test=18, channels=3, classes=3, seed=0):
    """<name>_TRAIN.ts and _TEST.ts like JapaneseVowels: variable length, multivariate."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        lines = [
            "#a tiny variable-length set",
            f"@problemName {name}",
            "@timeStamps false",
            "@missing false",
            "@univariate false",
            f"@dimensions {channels}",
            "@equalLength false",
            "@classLabel true " + " ".join(str(k + 1) for k in range(classes)),
            "@data",
        ]
        for i in range(n):
            label, length = i % classes, int(rng.integers(3, 12))
            chans = [
                ",".join(f"{v:.4f}" for v in label + rng.standard_normal(length))
                for _ in range(channels)
            ]
            lines.append(":".join(chans) + f":{label + 1}")
        (folder / f"{name}_{split}.ts").write_text("\n".join(lines) + "\n")
    return folder


TINY = ("dataset=uea", "dataset.name=Tiny", "dataset.shape=[3]", "dataset.num_classes=3")


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    data = write_ts(root / "data")
    return run_train(
        root,
        "model=lstm",
        *TINY,
        f"dataset.data_dir={data}",
        "model.hidden_size=8",
        "dataset.batch_size=8",
        "debug=fast",
        "accelerator=cpu",
    )


def test_lstm_classifies_ts_sequences_and_shows_bptt(seq_run):
    record = read_metrics(seq_run)
    assert record["status"] == "finished" and 0 <= record["metrics"]["test/acc"] <= 1
    tags = event_tags(seq_run).Tags()
    assert {"vis/bptt/grad_flow", "vis/bptt/gates", "vis/confusion_matrix"} <= set(tags["images"])
    assert {"train/clipped", "val/grad_decay", "train/grad_norm"} <= set(tags["scalars"])


def test_sequence_batches_are_bucketed_and_cropped(tmp_path):
    from nnlab.data.sequences import SequenceDataModule

    dm = SequenceDataModule(
        "Tiny", data_dir=write_ts(tmp_path), shape=[3], num_classes=3, batch_size=4, bucket=3
    )
    dm.setup()
    batches = list(dm.train_dataloader())
    x, lengths, y = batches[0]
    assert x.shape[1] == int(lengths.max()) and lengths.device.type == "cpu"
    assert len(y) == 4 and x.dtype == torch.float32
    assert sum(len(b[2]) for b in batches) == dm.split_size("train") // 4 * 4  # drop_last
    for x, lengths, _ in batches:  # zero padding after each length (standardised real steps)
        for row, n in zip(x, lengths):
            assert row[n:].abs().sum() == 0
    with pytest.raises(ConfigError, match="dataset.shape=\\[3\\] dataset.num_classes=3"):
        SequenceDataModule("Tiny", data_dir=tmp_path, shape=[2], num_classes=3).setup()


def test_tbptt_and_gru_on_synthetic_sequences(tmp_path):
    run = run_train(
        tmp_path,
        "model=lstm",
        "dataset=uea",
        "dataset.format=synthetic",
        "dataset.shape=[2]",
        "dataset.num_classes=3",
        "model.cell=gru",
        "model.tbptt_steps=4",
        "model.hidden_size=8",
        "debug=fast",
        "accelerator=cpu",
    )
    assert read_metrics(run)["status"] == "finished"


def write_airline(folder, n=72):
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(n)
    values = (100 + 2 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12))
    rows = [f"{1949 + k // 12}-{k % 12 + 1:02d},{v:.0f}" for k, v in zip(t, values)]
    (folder / "Airline.csv").write_text("Date,Passengers\n" + "\n".join(rows) + "\n")
    return folder


AIR = ("dataset.horizon=6", "dataset.window=12", "dataset.test_size=12", "dataset.val_size=6")


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fc")
    data = write_airline(root / "data")
    return run_train(
        root,
        "experiment=airline",
        f"dataset.data_dir={data}",
        *AIR,
        "model.hidden_size=8",
        "trainer.check_val_every_n_epoch=1",
        "debug=fast",
        "accelerator=cpu",
    )


def test_forecaster_reports_itself_beside_the_baselines(forecast_run):
    metrics = read_metrics(forecast_run)["metrics"]
    for name in ("", "_persistence", "_seasonal_naive", "_ar12"):
        for m in ("mae", "rmse", "mape"):
            assert np.isfinite(metrics[f"test/{m}{name}"])
    assert metrics["test/mae_seasonal_naive"] < metrics["test/mae_persistence"]  # a clean season
    images = set(event_tags(forecast_run).Tags()["images"])
    assert {"vis/forecast/test", "vis/forecast/val"} <= images


@pytest.mark.parametrize(
    "overrides,match",
    [
        (("model=lenet", "dataset=japanese_vowels"), "model=lenet reads images"),
        (("model=forecaster", "dataset=fashion_mnist"), "model=forecaster reads series"),
        (("model=lstm", "dataset=airline"), "holds windows of one time series"),
        (("experiment=airline", "dataset.horizon=0"), "dataset.horizon=0"),
        (("experiment=airline", "dataset.window=200"), "dataset.window=200"),
        (("experiment=airline", "dataset.transform=box"), "dataset.transform"),
        (("experiment=japanese_vowels", "model.cell=lsmt"), "Did you mean model.cell=lstm"),
    ],
)
def test_config_mistakes_are_one_paragraph(tmp_path, capsys, overrides, match):
    data = write_airline(tmp_path / "data")
    err, _ = run_fails(tmp_path, capsys, *overrides, f"dataset.data_dir={data}", "accelerator=cpu")
    assert match in err.replace("\n  ", " ")


def test_malformed_ts_is_a_data_error(tmp_path, capsys):
    data = write_ts(tmp_path / "data")
    path = data / "Tiny_TRAIN.ts"
    path.write_text(path.read_text().replace(":2\n", ":1,2:2\n", 1))
    err, _ = run_fails(
        tmp_path, capsys, "model=lstm", *TINY, f"dataset.data_dir={data}", "accelerator=cpu"
    )
    assert "data error" in err and "Tiny_TRAIN.ts, line" in err
