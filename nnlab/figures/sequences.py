"""The recurrent family's figures (drawn by nnlab/viz/sequences.py):

bptt/grad_flow   every validation epoch: mean ||dL/dh_t|| of the top layer against the steps
                 before the end, over a fixed validation batch (log scale); also the scalar
                 val/grad_decay in TensorBoard (log10 of the earliest step's norm over the
                 last one's: negative when the gradient vanishes)
bptt/gates       every validation epoch: an LSTM's (GRU's) gates over validation sequence 0
forecast/val     every validation epoch, and forecast/test after the test: the forecaster's
                 forecasts of the span beside the truth and the baselines
"""

from __future__ import annotations

import torch

from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.sequences import Forecaster, SequenceClassifier
from nnlab.viz.sequences import forecast_figure, gates_image, grad_flow_image


class _BPTT(FigureCallback):
    """Both BPTT pictures come from one unrolled pass over the fixed validation batch."""

    def applies(self, model) -> bool:
        return isinstance(model, SequenceClassifier)

    def profile(self, model, data):
        x, lengths, y = model.bptt_batch(data, "val")
        flow, gates = model.bptt_profile(x, lengths, y)
        return x, lengths, y, flow, gates


class GradFlow(_BPTT):
    """`bptt/grad_flow`: where the gradient of the loss reaches back to (vanishing gradients)."""

    tag = "bptt/grad_flow"

    def draw(self, model, data):
        _, _, y, flow, _ = self.profile(model, data)
        cell = model.rnn_args["cell"]
        title = (
            f"{cell}, epoch {model.current_epoch}: mean ||dL/dh_t|| of the top layer over "
            f"{len(y)} validation sequences (aligned at their ends)"
        )
        drawn = flow[torch.isfinite(flow) & (flow > 0)]
        self.decay = float(torch.log10(drawn[0] / drawn[-1])) if len(drawn) > 1 else None
        return grad_flow_image({cell: flow.numpy()}, title)

    def write(self, trainer, model, figure) -> None:
        super().write(trainer, model, figure)
        if self.decay is not None:
            for writer in viz.tensorboards(trainer):
                writer.add_scalar("val/grad_decay", self.decay, trainer.global_step)


class Gates(_BPTT):
    """`bptt/gates`: forget, store (input), update (cell) and output over one sequence."""

    tag = "bptt/gates"

    def applies(self, model) -> bool:
        return super().applies(model) and model.rnn_args["cell"] in ("lstm", "gru")

    def draw(self, model, data):
        x, lengths, y, _, gates = self.profile(model, data)
        n0 = int(lengths[0]) if lengths is not None else model.net.steps(x[:1]).shape[1]
        inputs = model.net.steps(x[:1])[0, :n0].cpu().numpy()
        name = model.class_names(data)[int(y[0])]
        title = (
            f"{model.rnn_args['cell']} gates on validation sequence 0 (class {name}), "
            f"epoch {model.current_epoch}"
        )
        return gates_image(inputs, {k: v.numpy() for k, v in gates.items()}, title)


class Forecast(FigureCallback):
    """`forecast/val` each validation epoch and `forecast/test` after the test."""

    stages = ("val", "test")

    def applies(self, model) -> bool:
        return isinstance(model, Forecaster)

    def run(self, trainer, model) -> None:
        self.stage = "test" if trainer.testing else "val"
        self.tag = f"forecast/{self.stage}"
        super().run(trainer, model)

    def draw(self, model, data):
        span, pred = model.forecast_span(data, self.stage)
        return forecast_figure(data, span, pred, model.hparams.get("cell", "rnn"), self.stage)
