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
BPTT you can see: every validation epoch the classifier logs ||dL/dh_t|| for each step t of a
fixed validation batch (`bptt/grad_flow`; val/grad_decay = log10 of the earliest step's norm over
the last step's, negative when the gradient vanishes) and an LSTM's (GRU's) gate activations over
one sequence (`bptt/gates`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnlab import viz
from nnlab.errors import ConfigError, check_choice
from nnlab.metrics import forecast as fc
from nnlab.models.base import NNLabModule
from nnlab.models.classifiers import ClassifierBase, confusion_image
from nnlab.nets.sequence import (
    CELLS,
    ForecastNet,
    SequenceNet,
    align_at_end,
    hidden_grad_norms,
    last_layer_state,
)
from nnlab.viz_sequences import forecast_image, gates_image, grad_flow_image


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


def clip_and_log(module, optimizer, clip, algorithm=None) -> None:
    """Clip the gradient norm at `clip` and log the share of steps that were clipped."""
    if not clip:
        return
    if (algorithm or "norm") == "norm":
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            module.log("train/clipped", (norm > clip).float(), on_step=False, on_epoch=True)
    module.clip_gradients(
        optimizer, gradient_clip_val=clip, gradient_clip_algorithm=algorithm or "norm"
    )


class SequenceClassifier(ClassifierBase):
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

    @staticmethod
    def unpack(batch):
        """(x, lengths, y) from a sequence batch, (x, None, y) from an image batch."""
        return batch if len(batch) == 3 else (batch[0], None, batch[1])

    # -- the steps ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, lengths, y = self.unpack(batch)
        if self.input_noise and lengths is not None:  # jitter the real steps, not the padding
            real = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(1)
            x = x + self.input_noise * torch.randn_like(x) * real.unsqueeze(2)
        loss = F.cross_entropy(self(x, lengths), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, stage: str, acc):
        x, lengths, y = self.unpack(batch)
        logits = self(x, lengths)
        preds = logits.argmax(1)
        acc.update(preds, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=stage == "val", batch_size=len(y))
        return x, y, preds

    def test_step(self, batch, batch_idx):
        if len(batch) == 2:  # images: the errors grid as for every classifier
            return super().test_step(batch, batch_idx)
        _, y, preds = self._eval_step(batch, "test", self.test_acc)
        self.test_cm.update(preds, y)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        clip = gradient_clip_val if gradient_clip_val is not None else self.default_clip
        clip_and_log(self, optimizer, clip, gradient_clip_algorithm)

    # -- BPTT you can see ----------------------------------------------------------------------
    def bptt_profile(self, x, lengths, y):
        """(mean ||dL/dh_t|| aligned at the sequences' ends (T,), gates of sequence 0
        {name: (T_0, H)}) for one batch, in eval mode (no dropout), without touching .grad."""
        x = self.net.steps(x)

        def loss_of_state(state):
            return F.cross_entropy(self.net.head(last_layer_state(self.net.rnn, state)), y)

        with torch.enable_grad(), viz_eval(self):
            norms, gates = hidden_grad_norms(self.net.rnn, x, lengths, loss_of_state)
        n0 = int(lengths[0]) if lengths is not None else x.shape[1]
        return align_at_end(norms, lengths), {k: v[0, :n0].cpu() for k, v in gates.items()}

    def on_validation_epoch_end(self):
        dm = self.datamodule
        if self.trainer.sanity_checking or dm is None or not self.trainer.is_global_zero:
            return
        if hasattr(dm, "sequences"):
            x, lengths, y = dm.sequences("val", self.grad_flow_batch)
        else:
            x, y = dm.fixed_batch("val", self.grad_flow_batch)
            lengths = None
        flow, gates = self.bptt_profile(x.to(self.device), lengths, y.to(self.device))
        cell = self.rnn_args["cell"]
        title = (
            f"{cell}, epoch {self.current_epoch}: mean ||dL/dh_t|| of the top layer over "
            f"{len(y)} validation sequences (aligned at their ends)"
        )
        viz.log_image(self, "bptt/grad_flow", grad_flow_image({cell: flow.numpy()}, title))
        first = flow[torch.isfinite(flow) & (flow > 0)]
        if len(first) > 1:
            decay = torch.log10(first[0] / first[-1])
            self.log("val/grad_decay", decay, on_epoch=True, sync_dist=False)
        if gates:
            n0 = int(lengths[0]) if lengths is not None else x.shape[1]
            inputs = self.net.steps(x[:1])[0, :n0].cpu().numpy()
            image = gates_image(
                inputs,
                {k: v.numpy() for k, v in gates.items()},
                f"{cell} gates on validation sequence 0 (class "
                f"{self._class_names()[int(y[0])]}), epoch {self.current_epoch}",
            )
            viz.log_image(self, "bptt/gates", image)

    def on_test_epoch_end(self):
        if self._errors or not hasattr(self.datamodule, "sequences"):
            return super().on_test_epoch_end()
        cm = self.test_cm.compute()
        classes = self._class_names()
        per_class = cm.diag().float() / cm.sum(1).clamp(min=1)
        self.extra_metrics = {f"test/acc_class/{c}": float(a) for c, a in zip(classes, per_class)}
        viz.log_image(self, "confusion_matrix", confusion_image(cm, classes))

    @torch.no_grad()
    def sample_grid(self, n=64, label=None, interpolate=False, datamodule=None) -> torch.Tensor:
        """Images: the errors grid. Sequences: the gate picture of test sequence 0 (LSTM/GRU)
        or the gradient-flow picture (plain RNN)."""
        dm = datamodule or self.datamodule
        if not hasattr(dm, "sequences"):
            return super().sample_grid(n, label, interpolate, datamodule)
        x, lengths, y = dm.sequences("test", self.grad_flow_batch)
        flow, gates = self.bptt_profile(x.to(self.device), lengths, y.to(self.device))
        if not gates:
            return grad_flow_image({self.rnn_args["cell"]: flow.numpy()})
        inputs = x[0, : int(lengths[0])].cpu().numpy()
        return gates_image(inputs, {k: v.numpy() for k, v in gates.items()})


class viz_eval:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Eval mode inside the block, the previous mode restored after it (even on error)."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training

    def __enter__(self):
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return False


class Forecaster(NNLabModule):
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
        self.extra_metrics: dict[str, float] = {}
        self._preds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (B, W, 1) -> the scaled forecasts at every step (B, W, H)."""
        return self.net(x, tbptt=self.tbptt if self.training else None)[0]

    def training_step(self, batch, batch_idx):
        x, targets = batch  # (B, W, 1), (B, W, H)
        out = self(x)
        if not self.many_to_many:  # many-to-one: only the window's last step is scored
            out, targets = out[:, -1:], targets[:, -1:]
        loss = F.mse_loss(out, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        return loss

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        clip = gradient_clip_val if gradient_clip_val is not None else self.default_clip
        clip_and_log(self, optimizer, clip, gradient_clip_algorithm)

    # -- forecasts of the val and test spans -----------------------------------------------------
    def forecast(self, x: torch.Tensor, origins: torch.Tensor, datamodule=None) -> torch.Tensor:
        """Forecasts in the series' units (B, H) from windows ending just before `origins`."""
        dm = datamodule or self.datamodule
        return dm.to_values(self(x)[:, -1], origins.tolist()).cpu()

    def validation_step(self, batch, batch_idx):
        self._preds.append((batch[1].cpu(), self.forecast(*batch)))

    test_step = validation_step

    def on_validation_epoch_start(self):
        self._preds = []

    on_test_epoch_start = on_validation_epoch_start

    def _span_metrics(self, stage: str) -> dict:
        span = self.datamodule.span(stage)
        pred = torch.cat([p for _, p in self._preds])
        self._preds = []
        scores = {f"{stage}/{k}": v for k, v in fc.errors(pred, span["truth"]).items()}
        return scores, span, pred

    def on_validation_epoch_end(self):
        scores, span, pred = self._span_metrics("val")
        for k, v in scores.items():
            self.log(k, v.float(), prog_bar=k.endswith("mae"))
        if not self.trainer.sanity_checking:
            viz.log_image(self, "forecast/val", self.plot(span, pred, "val"))

    def on_test_epoch_end(self):
        scores, span, pred = self._span_metrics("test")
        for name, base in span["baselines"].items():  # e.g. test/mae_seasonal_naive
            for k, v in fc.errors(base, span["truth"]).items():
                scores[f"test/{k}_{name}"] = v
        for k, v in scores.items():
            self.log(k, v.float())
        viz.log_image(self, "forecast/test", self.plot(span, pred, "test"))

    def plot(self, span: dict, pred: torch.Tensor, stage: str, datamodule=None) -> torch.Tensor:
        dm = datamodule or self.datamodule
        n = span["stop"] - span["start"]
        lines = {self.hparams.get("cell", "rnn"): pred.flatten()[:n].numpy()}
        lines.update({k: v.flatten()[:n].numpy() for k, v in span["baselines"].items()})
        values = dm.series.y.cpu().numpy()[: span["stop"]]
        show_from = max(0, span["start"] - max(4 * n, 3 * dm.period))
        return forecast_image(
            np.asarray(dm.x)[: span["stop"]],
            values,
            span["start"],
            lines,
            f"{dm.name}: {stage} span, "
            + (
                "one-step-ahead forecasts, each from the true history"
                if dm.horizon == 1
                else f"{dm.horizon}-step forecasts from every {dm.horizon}th point"
            ),
            dm.units,
            show_from=show_from,
            xlabel="year" if dm.format == "csv" else "step",
        )

    @torch.no_grad()
    def sample_grid(self, n=64, label=None, interpolate=False, datamodule=None) -> torch.Tensor:
        """The forecast plot of the test span (the model and the baselines)."""
        dm = datamodule or self.datamodule
        if dm is None:
            raise ConfigError("The forecaster's sample is its test forecast: it needs the data.")
        dm.setup("test")
        span = dm.span("test")
        with viz_eval(self):
            origins = torch.tensor(span["origins"], device=self.device)
            pred = self.forecast(dm.series.at_origins(span["origins"]), origins, dm)
        return self.plot(span, pred, "test", dm)
