"""Spiking nets: the LIF update against a hand computation (decay, threshold, reset by subtraction),
the surrogate gradient where the step's is zero, the input codings, the nets' shapes, the losses
and the firing rates."""

from __future__ import annotations

import math

import pytest
import torch

from nnlab.models.snn import firing_rate, membrane_loss, spike_count_loss
from nnlab.nets.spiking import (
    SpikingNet,
    direct_encode,
    latency_encode,
    lif,
    rate_encode,
    spike,
)


def test_lif_by_hand():
    # one neuron, beta 0.5, threshold 1, currents 0.6, 0.6, 0.6, 0, 1.5
    current = torch.tensor([0.6, 0.6, 0.6, 0.0, 1.5])[:, None]
    spikes, mems = lif(current, beta=0.5, threshold=1.0)
    # U1 = 0.6                       no spike
    # U2 = 0.5*0.6 + 0.6 = 0.9       no spike
    # U3 = 0.5*0.9 + 0.6 = 1.05      spike (>= 1)
    # U4 = 0.5*1.05 + 0 - 1 = -0.475 the reset subtracts the threshold
    # U5 = 0.5*-0.475 + 1.5 = 1.2625 spike
    assert torch.allclose(mems[:, 0], torch.tensor([0.6, 0.9, 1.05, -0.475, 1.2625]), atol=1e-6)
    assert spikes[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_lif_decays_without_input_and_never_fires_below_threshold():
    current = torch.zeros(6, 3)
    current[0] = torch.tensor([0.8, 0.5, -0.5])
    spikes, mems = lif(current, beta=0.9)
    assert spikes.sum() == 0
    expected = current[0] * 0.9 ** torch.arange(6.0)[:, None]
    assert torch.allclose(mems, expected, atol=1e-6)


def test_surrogate_gradient_is_nonzero_where_the_step_is_flat():
    x = torch.tensor([-2.0, -0.5, -0.01, 0.3, 1.0], requires_grad=True)  # U - theta
    out = spike(x, slope=25.0)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # the forward is the true step
    out.sum().backward()
    # the Heaviside step's derivative is 0 at all these points; the fast sigmoid's is not
    expected = 1 / (25 * x.detach().abs() + 1) ** 2
    assert torch.allclose(x.grad, expected)
    assert (x.grad > 0).all()
    assert x.grad[2] > x.grad[1] > x.grad[0]  # largest near the threshold


def test_gradient_flows_back_through_time():
    w = torch.tensor(0.3, requires_grad=True)
    current = w * torch.ones(10, 1)
    spikes, _ = lif(current, beta=0.9)
    spikes.sum().backward()
    assert w.grad is not None and float(w.grad) > 0  # more current, more spikes


def test_rate_coding_mean_is_the_intensity():
    x = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    spikes = rate_encode(x.expand(2000, 5), 50, generator=torch.Generator().manual_seed(0))
    assert spikes.shape == (50, 2000, 5)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(spikes.mean((0, 1)), x, atol=0.01)


def test_rate_coding_passes_the_gradient_of_the_expected_spike():
    x = torch.tensor([0.2, 0.7], requires_grad=True)
    spikes = rate_encode(x, 9, generator=torch.Generator().manual_seed(0))
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}  # the values stay spikes
    (grad,) = torch.autograd.grad(spikes.sum(), x)
    assert grad.tolist() == [9.0, 9.0]  # d E[sum_t S[t]] / dp = T
    assert not rate_encode(x.detach(), 3).requires_grad  # training draws no graph


def test_latency_coding_one_spike_bright_first():
    x = torch.tensor([[1.0, 0.5, 0.0, 0.2]])
    spikes = latency_encode(x, num_steps=11)
    assert spikes.shape == (11, 1, 4)
    assert spikes.sum(0).tolist() == [[1.0, 1.0, 0.0, 1.0]]  # black stays silent
    first = spikes.argmax(0)[0]
    assert first[0] == 0 and first[1] == 5 and first[3] == 8  # round((1 - p) * 10)


@pytest.mark.parametrize("arch,hidden", [("mlp", (16,)), ("conv", (4, 8))])
def test_direct_coding_runs_the_first_layer_once_with_the_same_result(arch, hidden):
    torch.manual_seed(0)
    net = SpikingNet((1, 28, 28), 10, arch=arch, hidden=hidden, beta=0.9, threshold=0.5)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    inputs = direct_encode(x, 6)
    assert inputs.shape == (6, 3, 1, 28, 28) and torch.equal(inputs[4], x.detach())
    once = net(inputs, constant=True)
    every = net(inputs.contiguous(), constant=False)
    for (s1, m1), (s2, m2) in zip(once, every):
        assert torch.equal(s1, s2) and torch.allclose(m1, m2, atol=1e-5)
    (g1,) = torch.autograd.grad(once[-1][1].sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(every[-1][1].sum(), x)
    assert torch.allclose(g1, g2, atol=1e-4) and g1.abs().sum() > 0  # the image gets a gradient


@pytest.mark.parametrize("arch,hidden", [("mlp", (32,)), ("conv", (4, 8))])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_net_shapes(arch, hidden, shape):
    net = SpikingNet(shape, 10, arch=arch, hidden=hidden)
    x = rate_encode(torch.rand(2, *shape), 7)
    records = net(x)
    assert len(records) == len(hidden) + 1
    assert records[-1][0].shape == (7, 2, 10) and records[-1][1].shape == (7, 2, 10)
    if arch == "conv":
        assert records[0][0].shape[2] == 4  # conv spikes keep their channel maps
    for spk, mem in records:
        assert spk.shape == mem.shape and set(spk.unique().tolist()) <= {0.0, 1.0}


def test_losses_and_firing_rate():
    spikes = torch.zeros(4, 2, 3)
    spikes[:, 0, 1] = 1  # image 0: neuron 1 fires at every step
    spikes[:2, 1, 2] = 1  # image 1: neuron 2 fires twice
    labels = torch.tensor([1, 2])
    counts = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    expected = torch.nn.functional.cross_entropy(counts, labels)
    assert math.isclose(float(spike_count_loss(spikes, labels)), float(expected), rel_tol=1e-6)
    assert math.isclose(float(firing_rate(spikes)), 6 / 24)
    mems = torch.randn(4, 2, 3)
    per_step = sum(torch.nn.functional.cross_entropy(m, labels) for m in mems) / 4
    assert math.isclose(float(membrane_loss(mems, labels)), float(per_step), rel_tol=1e-5)


def test_an_snn_learns_a_toy_task():
    # two classes: bright left half vs bright right half, rate coded; a few Adam steps suffice
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    y = torch.arange(64) % 2
    x[y == 0, :, :, :4] = 0.9
    x[y == 1, :, :, 4:] = 0.9
    net = SpikingNet((1, 8, 8), 2, arch="mlp", hidden=(16,), beta=0.8)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        spk, _ = net(rate_encode(x, 10))[-1]
        loss = spike_count_loss(spk, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spk, _ = net(rate_encode(x, 10))[-1]
    assert (spk.sum(0).argmax(1) == y).float().mean() > 0.9


# -- the model ---------------------------------------------------------------------------------
def small_snn(**kw):
    from nnlab.models.snn import SNN

    return SNN("snn", **{"hidden": [16], "num_steps": 6, "input_shape": [1, 28, 28], **kw})


def test_prediction_is_the_spike_count_or_the_membrane_as_the_loss_says():

    spikes = torch.zeros(4, 1, 3)
    spikes[:, 0, 0] = 1
    spikes[:2, 0, 1] = 1
    spikes[:2, 0, 2] = 1
    mems = torch.zeros(4, 1, 3)
    mems[:, 0, 2] = 0.5  # neurons 1 and 2 tie on 2 spikes: the higher membrane wins the tie
    scores = small_snn(loss="count").scores(spikes, mems)[0]
    assert scores.argsort(descending=True).tolist() == [0, 2, 1]
    assert torch.equal(scores.floor(), torch.tensor([4.0, 2.0, 2.0]))
    # trained on membranes, read out by membranes: the mean U, whatever the spikes say
    assert small_snn(loss="membrane").scores(spikes, mems)[0].argmax() == 2


def test_eval_spike_trains_are_reproducible_and_training_ones_are_not():
    torch.manual_seed(0)
    model = small_snn()
    x = torch.rand(3, 1, 28, 28)
    assert not torch.equal(model.encode(x), model.encode(x))
    model.eval()
    assert torch.equal(model.encode(x), model.encode(x))
    assert torch.equal(model(x), model(x))


def test_step_logs_loss_rates_and_accuracy():
    torch.manual_seed(0)
    model = small_snn(loss="membrane").eval()
    x, y = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))
    terms = model.step((x, y), "val")
    assert {"loss", "rate/hidden1", "rate/output", "spikes_per_image", "acc"} <= set(terms)
    records = model.run(x)
    assert math.isclose(float(terms["rate/hidden1"]), float(records[0][0].mean()), rel_tol=1e-6)
    total = sum(float(s.sum()) for s, _ in records) / 5
    assert math.isclose(float(terms["spikes_per_image"]), total, rel_tol=1e-5)
    assert math.isclose(float(terms["loss"]), float(membrane_loss(records[-1][1], y)), rel_tol=1e-5)


def test_bad_options_are_one_config_error():
    from nnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="model.encoding"):
        small_snn(encoding="phase")
    with pytest.raises(ConfigError, match="num_steps"):
        small_snn(num_steps=0)
    with pytest.raises(ConfigError, match="does not fit"):
        from nnlab.models.snn import SNN

        SNN("snn", arch="conv", hidden=[4, 4, 4, 4], input_shape=[1, 28, 28])
