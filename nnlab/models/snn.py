"""A spiking neural network of leaky integrate-and-fire neurons trained with surrogate gradients
through time (Neftci, Mostafa & Zenke 2019; the nets are in nnlab/nets/spiking.py).

The image is presented for num_steps steps: as spike trains (rate or latency coding) or as the
constant input current of the first LIF layer (direct coding); the class is the output neuron that
fires most. Two losses from the literature (snnTorch's ce_count_loss and
ce_mem_loss):

    membrane  cross-entropy of the output membranes U_k[t] at every step, averaged over the steps
              (the default: on rate-coded Fashion-MNIST it reached 83.8% after 250 steps where
              the count loss stood at 42.7%; every step gets a gradient, not only spiking ones)
    count     cross-entropy of the output spike counts  sum_t S_k[t]  taken as logits

The prediction follows the loss: with the count loss the output neuron with the most spikes (ties
broken by the mean membrane potential), with the membrane loss the highest mean membrane (trained
on membranes, the output neurons of snn_fashion stayed silent on 76% of the test images: they act
as leaky integrators; the hidden layer spikes). The energy story: the mean firing rate of each
layer (spikes per neuron per step) and the spikes per image, logged as */rate/<layer> and
*/spikes_per_image. Validation and test draw
their rate-coded spike trains from a fixed seed per batch, so `nnlab eval` reproduces test/acc.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.errors import ConfigError, check_choice
from nnlab.models.classifiers import ClassifierBase
from nnlab.nets.spiking import (
    ARCHS,
    ENCODINGS,
    SpikingNet,
    direct_encode,
    latency_encode,
    rate_encode,
)

LOSSES = ("count", "membrane")


def spike_count_loss(spikes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(sum_t S[t], y) over output spikes (T, B, K): the counts are the logits."""
    return F.cross_entropy(spikes.sum(0), labels)


def membrane_loss(mems: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/T) sum_t CE(U[t], y) over output membranes (T, B, K), each step."""
    t, b, k = mems.shape
    return F.cross_entropy(mems.reshape(t * b, k), labels.repeat(t))


def firing_rate(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes per neuron per step of one layer's record (T, B, ...): a number in [0, 1]."""
    return spikes.mean()


class SNN(ClassifierBase):
    """LIF neurons (nnlab/nets/spiking.py), `mlp` or `conv`, trained through time with the
    fast-sigmoid surrogate gradient on `num_steps` steps of rate- or latency-coded input."""

    def __init__(
        self,
        name,
        arch="mlp",
        hidden=(1000,),
        num_steps=25,
        beta=0.95,
        threshold=1.0,
        slope=25.0,
        encoding="rate",
        loss="membrane",
        n_raster_neurons=128,
        **kwargs,
    ):
        check_choice("model.arch", arch, ARCHS)
        check_choice("model.encoding", encoding, ENCODINGS)
        check_choice("model.loss", loss, LOSSES)
        if not (isinstance(num_steps, int) and num_steps >= 1) or not 0 <= beta <= 1:
            raise ConfigError(
                f"model.num_steps={num_steps!r} must be a positive integer and model.beta={beta} "
                "(the membrane's decay per step) in [0, 1], e.g. num_steps=25, beta=0.95."
            )
        if threshold <= 0 or slope <= 0 or not hidden:
            raise ConfigError(
                f"model.threshold={threshold} and model.slope={slope} must be positive and "
                f"model.hidden={list(hidden)} name at least one hidden layer, e.g. [1000]."
            )
        self.snn_args = dict(
            arch=arch, hidden=tuple(hidden), beta=beta, threshold=threshold, slope=slope
        )
        self.num_steps, self.encoding, self.loss_kind = int(num_steps), encoding, loss
        self.n_raster_neurons = int(n_raster_neurons)
        super().__init__(name, **kwargs)
        n = len(self.snn_args["hidden"])
        self.layer_names = [f"hidden{i + 1}" for i in range(n)] + ["output"]

    def build_net(self) -> nn.Module:
        try:
            return SpikingNet(self.input_shape, self.num_classes, **self.snn_args)
        except ValueError as err:
            raise ConfigError(f"model.hidden does not fit the images: {err}.") from None

    # -- the model ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the inputs of each step (T, B, C, H, W): spike trains (rate coding
        draws them from a fixed seed outside training), or the image itself (direct)."""
        if self.encoding == "latency":
            return latency_encode(x, self.num_steps)
        if self.encoding == "direct":
            return direct_encode(x, self.num_steps)
        gen = None
        if not self.training:
            gen = torch.Generator(device=x.device).manual_seed(0)
        return rate_encode(x, self.num_steps, generator=gen)

    def run(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(spikes, membranes) of every LIF layer, each (T, B, ...), for images in [0, 1]."""
        return self.net(self.encode(x), constant=self.encoding == "direct")

    def scores(self, spikes: torch.Tensor, mems: torch.Tensor) -> torch.Tensor:
        """The read-out (B, K) of output spikes and membranes (T, B, K), as the loss trains it:
        count: the spike counts, plus < 0.5 from the mean membrane to break ties; membrane: the
        mean membrane potential (the logits of the membrane loss: a leaky-integrator read-out,
        as the output neurons may stay below threshold)."""
        if self.loss_kind == "membrane":
            return mems.mean(0)
        return spikes.sum(0) + 0.5 * torch.sigmoid(mems.mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class scores (B, K), argmax = the prediction (see scores)."""
        return self.scores(*self.run(x)[-1])

    def step(self, batch, stage: str) -> dict:
        x, y = batch
        records = self.run(x)
        spikes, mems = records[-1]
        if self.loss_kind == "count":
            loss = spike_count_loss(spikes, y)
        else:
            loss = membrane_loss(mems, y)
        terms = {"loss": loss}
        if stage != "train" or self.logging_step:
            for name, (spk, _) in zip(self.layer_names, records):
                terms[f"rate/{name}"] = firing_rate(spk.detach())
            per_image = sum(spk.detach().flatten(2).sum(2) for spk, _ in records).sum(0)
            terms["spikes_per_image"] = per_image.float().mean()
        if stage == "train":
            return terms
        preds = self.scores(spikes, mems).argmax(1)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc.update(preds, y)
        if stage == "test":
            self.test_cm.update(preds, y)
        return {**terms, "acc": acc}
