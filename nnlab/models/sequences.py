"""The recurrent family (nets in nnlab/nets/sequence.py):

    lstm        many-to-one: an RNN / GRU / LSTM classifies a sequence from its final hidden
                state; variable-length batches (x, lengths, y) are packed, images are read row
                by row. L = -log softmax(W h_T + b)_y.
    forecaster  many-to-many: at every step the next H values of a series (Graves 2013, sec. 2;
                Hyndman & Athanasopoulos 2021 for the baselines); L = mean squared error over the
                steps and horizons; forecasts are read at the last step of a window.

Both train with backpropagation through time (Werbos 1990), optionally truncated
(model.tbptt_steps; Williams & Peng 1990), with the gradient norm clipped by default (Pascanu et
al. 2013) and the clipped share of steps logged (train/clipped).
BPTT you can see: `bptt_profile` gives ||dL/dh_t|| for each step t of a batch and an LSTM's (GRU's)
gate activations over its first sequence; the figure callbacks of nnlab/figures/sequences.py draw
them every validation epoch (`bptt/grad_flow`, `bptt/gates`) and the forecasts (`forecast/val`,
`forecast/test`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnlab import viz
from nnlab.errors import ConfigError, check_choice
from nnlab.metrics import forecast as fc
from nnlab.models.base import NNLabModule
from nnlab.models.classifiers import ClassifierBase
from nnlab.nets.sequence import (
    CELLS,
    ForecastNet,
    SequenceNet,
    align_at_end,
    hidden_grad_norms,
    last_layer_state,
)
from nnlab.viz.sequences import forecast_figure, gates_image, grad_flow_image


def _recurrent_args(cell, hidden_size, num_layers, dropout, tbptt_steps):
    check_choice("model.cell", cell, CELLS)
    if int(hidden_size) < 1 or int(num_layers) < 1:
        raise ConfigError(
            "model.hidden_size and model.num_layers must be positive integers, e.g. "
            "model.hidden_size=128."
        )
    if not 0 <= float(dropout) < 1:
        raise ConfigError(f"model.dropout={dropout} must be in [0, 1), e.g. model.dropout=0.1.")
    if tbptt_steps is not None and int(tbptt_steps) < 1:
        raise ConfigError(
            f"model.tbptt_steps={tbptt_steps} must be null (full BPTT) or a positive number of "
            "steps, e.g. model.tbptt_steps=100."
        )
    return dict(cell=cell, hidden_size=int(hidden_size), num_layers=int(num_layers))


class ClippedShare:
    """Mixin for recurrent models: clip the gradient norm at the model's default (the YAML's
    gradient_clip_val; trainer.gradient_clip_val wins when set) and log train/clipped, the share
    of an epoch's steps whose norm was over it (counted on the device, logged once an epoch)."""

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        clip = gradient_clip_val if gradient_clip_val is not None else self.default_clip
        if not clip:
            return
        if (gradient_clip_algorithm or "norm") != "norm":
            self.clip_gradients(optimizer, clip, gradient_clip_algorithm)
            return
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)  # one pass: both
        counts = torch.stack([(norm > clip).float(), torch.ones_like(norm)])
        self._clipped = (
            counts if getattr(self, "_clipped", None) is None else self._clipped + counts
        )

    def on_train_epoch_start(self):
        self._clipped = None

    def on_train_epoch_end(self):
        if getattr(self, "_clipped", None) is not None:
            self.log("train/clipped", self._clipped[0] / self._clipped[1], on_epoch=True)


class SequenceClassifier(ClippedShare, ClassifierBase):
    """Many-to-one RNN/GRU/LSTM: sequences (x, lengths) or images (H steps of one row each)."""

    def __init__(
        self,
        name,
        cell="lstm",
        hidden_size=128,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
        tbptt_steps=None,
        inputs=("images", "sequences"),
        grad_flow_batch=32,
        input_noise=0.0,
        **kwargs,
    ):
        if float(input_noise) < 0:
            raise ConfigError(f"model.input_noise={input_noise} must be >= 0 (0: off).")
        self.input_noise = float(input_noise)
        self.rnn_args = _recurrent_args(cell, hidden_size, num_layers, dropout, tbptt_steps)
        self.rnn_args.update(bidirectional=bool(bidirectional), dropout=float(dropout))
        if tbptt_steps is not None and bidirectional:
            raise ConfigError(
                "model.tbptt_steps and model.bidirectional=true do not go together: the backward "
                "direction would start each chunk from the chunk's end. Drop one of them."
            )
        self.tbptt = int(tbptt_steps) if tbptt_steps else None
        self.grad_flow_batch = int(grad_flow_batch)
        super().__init__(name, **kwargs)

    def build_net(self) -> nn.Module:
        return SequenceNet(self.input_shape, self.num_classes, **self.rnn_args)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] or sequences (B, T, F) with lengths -> logits."""
        return self.net(x, lengths, tbptt=self.tbptt if self.training else None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self(x, lengths).argmax(1)

    def step(self, batch, stage: str) -> dict:
        """The classifiers' step on (images, y) or (x, lengths, y); in training, model.input_noise
        jitters the real steps of sequences (never the padding)."""
        if stage == "train" and self.input_noise and len(batch) == 3:
            x, lengths, y = batch
            real = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(1)
            batch = (x + self.input_noise * torch.randn_like(x) * real.unsqueeze(2), lengths, y)
        return super().step(batch, stage)

    # -- BPTT you can see ----------------------------------------------------------------------
    def bptt_profile(self, x, lengths, y):
        """(mean ||dL/dh_t|| aligned at the sequences' ends (T,), gates of sequence 0
        {name: (T_0, H)}) for one batch, in eval mode (no dropout), without touching .grad.
        x: sequences (B, T, F) with lengths, or images (lengths None)."""
        x = self.net.steps(x)

        def loss_of_state(state):
            return F.cross_entropy(self.net.head(last_layer_state(self.net.rnn, state)), y)

        with torch.enable_grad(), viz.eval_mode(self):
            norms, gates = hidden_grad_norms(self.net.rnn, x, lengths, loss_of_state)
        n0 = int(lengths[0]) if lengths is not None else x.shape[1]
        return align_at_end(norms, lengths), {k: v[0, :n0].cpu() for k, v in gates.items()}

    def bptt_batch(self, data, split: str = "val"):
        """The fixed batch the BPTT pictures use: (x, lengths or None, y) on the model's device."""
        if hasattr(data, "sequences"):
            x, lengths, y = data.sequences(split, self.grad_flow_batch)
        else:
            (x, y), lengths = data.images(split, self.grad_flow_batch), None
        return x.to(self.device), lengths, y.to(self.device)

    @torch.no_grad()
    def sample_grid(self, n=64, label=None, interpolate=False, datamodule=None) -> torch.Tensor:
        """Images: the errors grid. Sequences: the gate picture of test sequence 0 (LSTM/GRU)
        or the gradient-flow picture (plain RNN)."""
        dm = datamodule or self.datamodule
        if not hasattr(dm, "sequences"):
            return super().sample_grid(n, label, interpolate, datamodule)
        x, lengths, y = self.bptt_batch(dm, "test")
        flow, gates = self.bptt_profile(x, lengths, y)
        cell = self.rnn_args["cell"]
        if not gates:
            return grad_flow_image({cell: flow.numpy()})
        inputs = x[0, : int(lengths[0])].cpu().numpy()
        return gates_image(inputs, {k: v.numpy() for k, v in gates.items()}, f"{cell} gates")


class Forecaster(ClippedShare, NNLabModule):
    """Many-to-many RNN/GRU/LSTM forecaster of the next `horizon` values at every step."""

    def __init__(
        self,
        name,
        horizon=1,
        cell="lstm",
        hidden_size=64,
        num_layers=1,
        dropout=0.0,
        tbptt_steps=None,
        many_to_many=True,
        gradient_clip_val=1.0,
        inputs=("series",),
        **kwargs,
    ):
        if int(horizon) < 1:
            raise ConfigError(
                f"model.horizon={horizon}: the forecast horizon must be at least one step; set "
                "dataset.horizon=1 (the model reads it from there)."
            )
        args = _recurrent_args(cell, hidden_size, num_layers, dropout, tbptt_steps)
        super().__init__(name, **kwargs)
        self.horizon, self.many_to_many = int(horizon), bool(many_to_many)
        self.tbptt = int(tbptt_steps) if tbptt_steps else None
        self.default_clip = gradient_clip_val
        features = self.input_shape[0] if self.input_shape else 1
        self.net = ForecastNet(features, self.horizon, dropout=float(dropout), **args)
        self._preds: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (B, W, 1) -> the scaled forecasts at every step (B, W, H)."""
        return self.net(x, tbptt=self.tbptt if self.training else None)[0]

    def step(self, batch, stage: str) -> dict:
        """train: the mean squared error over the window's steps (many-to-one: its last step) on
        (windows, targets). val/test: the forecasts from the batch's origins are kept; the span's
        errors are logged at the epoch's end (on_validation_epoch_end, on_test_epoch_end)."""
        if stage != "train":
            self._preds.append(self.forecast(*batch))
            return {}
        x, targets = batch  # (B, W, 1), (B, W, H)
        out = self(x)
        if not self.many_to_many:  # many-to-one: only the window's last step is scored
            out, targets = out[:, -1:], targets[:, -1:]
        return {"loss": F.mse_loss(out, targets)}

    # -- forecasts of the val and test spans -----------------------------------------------------
    def forecast(self, x: torch.Tensor, origins: torch.Tensor, datamodule=None) -> torch.Tensor:
        """Forecasts in the series' units (B, H) from windows ending just before `origins`."""
        dm = datamodule or self.datamodule
        return dm.to_values(self(x)[:, -1], origins.tolist()).cpu()

    def forecast_span(self, data, split: str) -> tuple[dict, torch.Tensor]:
        """(the span of `split` with its truth and baselines, the model's forecasts of it)."""
        span = data.span(split)
        with viz.eval_mode(self):
            x = data.series.at_origins(span["origins"]).to(self.device)
            pred = self.forecast(x, torch.tensor(span["origins"]), data)
        return span, pred

    def on_validation_epoch_start(self):
        self._preds = []

    on_test_epoch_start = on_validation_epoch_start

    def _log_span(self, stage: str, baselines: bool = False) -> None:
        span = self.datamodule.span(stage)
        pred, self._preds = torch.cat(self._preds), []
        terms = fc.errors(pred, span["truth"])
        if baselines:  # e.g. test/mae_seasonal_naive beside test/mae
            for name, base in span["baselines"].items():
                terms.update({f"{k}_{name}": v for k, v in fc.errors(base, span["truth"]).items()})
        self.log_terms(stage, {k: v.float() for k, v in terms.items()})

    def on_validation_epoch_end(self):
        self._log_span("val")

    def on_test_epoch_end(self):
        self._log_span("test", baselines=True)

    @torch.no_grad()
    def sample_grid(self, n=64, label=None, interpolate=False, datamodule=None) -> torch.Tensor:
        """The forecast plot of the test span (the model and the baselines)."""
        dm = datamodule or self.datamodule
        if dm is None:
            raise ConfigError("The forecaster's sample is its test forecast: it needs the data.")
        dm.setup("test")
        span, pred = self.forecast_span(dm, "test")
        return forecast_figure(dm, span, pred, self.hparams.get("cell", "rnn"), "test")
