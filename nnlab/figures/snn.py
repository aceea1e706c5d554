"""The spiking net's own figures, for the first validation image: a spike raster of the first
hidden layer and the membrane potentials of a few output neurons (the classifiers' errors grid
and confusion matrix come on top)."""

from __future__ import annotations

from nnlab.figures import FigureCallback
from nnlab.models.snn import SNN
from nnlab.viz import outlook as viz


class SpikeRaster(FigureCallback):
    """`spike_raster`: which of the first n_raster_neurons neurons of hidden layer 1 fired when."""

    tag = "spike_raster"

    def applies(self, model) -> bool:
        return isinstance(model, SNN)

    def draw(self, model, data):
        x, y = data.images("val", 1)
        spikes = model.run(x)[0][0][:, 0].flatten(1)  # (T, neurons) of hidden layer 1
        n = min(model.n_raster_neurons, spikes.shape[1])
        active = float((spikes.sum(0) > 0).float().mean())
        name = model.class_names(data)[int(y[0])]
        title = (
            f"hidden1, neurons 0-{n - 1} of {spikes.shape[1]}, one '{name}' image: "
            f"{active:.0%} of the layer fired, rate {float(spikes.mean()):.3f}"
        )
        return viz.spike_raster(spikes[:, :n], title=title, max_neurons=n)


class MembraneTraces(FigureCallback):
    """`membrane`: U[t] of the output neurons of the true class and the three next most active
    ones, for the first validation image, with their spikes and the threshold."""

    tag = "membrane"

    def applies(self, model) -> bool:
        return isinstance(model, SNN)

    def draw(self, model, data):
        x, y = data.images("val", 1)
        spikes, mems = (r[:, 0] for r in model.run(x)[-1])  # (T, K) each
        true = int(y[0])
        ranked = model.scores(spikes[:, None], mems[:, None])[0].argsort(descending=True).tolist()
        chosen = [true] + [k for k in ranked if k != true][:3]
        names = model.class_names(data)
        pred = names[ranked[0]]
        return viz.membrane_traces(
            mems[:, chosen],
            spikes[:, chosen],
            [names[k] for k in chosen],
            threshold=model.snn_args["threshold"],
            title=f"output membranes U[t], true: {names[true]}, predicted: {pred}",
        )
