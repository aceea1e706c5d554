"""A spiking neural network of leaky integrate-and-fire neurons trained with surrogate gradients
through time (Neftci, Mostafa & Zenke 2019; the nets are in nnlab/nets/spiking.py).

The image is encoded as spike trains over num_steps steps (rate or latency coding); the class is
the output neuron that fires most. Two losses from the literature (snnTorch's ce_count_loss and
ce_mem_loss):

    count     cross-entropy of the output spike counts  sum_t S_k[t]  taken as logits
    membrane  cross-entropy of the output membranes U_k[t] at every step, averaged over the steps

The energy story: the mean firing rate of each layer (spikes per neuron per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
