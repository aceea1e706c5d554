"""The VAE: ELBO terms by hand, the IWAE bound, binarised data (model.binarize), end-to-end runs,
image grids and TensorBoard tags."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, event_tags, read_metrics, run_train
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.vae import VAE, binarize, gaussian_kl


class Const(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, inp):
        return self.value.expand(len(inp), *self.value.shape)


def tiny_vae(**kw) -> VAE:
    torch.manual_seed(0)
    kw = {"input_shape": (1, 2, 2), "hidden_dims": [8], "latent_dim": 2, **kw}
    return VAE(name="vae", **kw)


def test_elbo_terms_match_a_hand_computation():
    model = tiny_vae()
    mu, var = [1.0, -2.0], [4.0, 1.0]
    model.encoder = Const(torch.tensor(mu + [math.log(v) for v in var]))
    logits = [[0.0, 2.0], [-1.0, 3.0]]
    model.decoder = Const(torch.tensor([logits]))  # p(x|z) independent of z: recon is deterministic
    x = torch.tensor([[[[0.0, 1.0], [0.5, 1.0]]], [[[1.0, 0.0], [0.0, 0.25]]]])

    # KL(N(mu, var) || N(0, 1)) = 1/2 sum(mu^2 + var - 1 - log var)
    kl = 0.5 * sum(m * m + v - 1 - math.log(v) for m, v in zip(mu, var))
    assert kl == pytest.approx(0.5 * (4 - math.log(4)) + 2.0)
    # Bernoulli NLL summed over pixels: -[x log s(l) + (1 - x) log(1 - s(l))]
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    flat_l = [t for row in logits for t in row]
    nll = [
        -sum(
            xi * math.log(sig(t)) + (1 - xi) * math.log(1 - sig(t))
            for xi, t in zip(img.flatten().tolist(), flat_l)
        )
        for img in x
    ]
    terms = model.loss_terms(x)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["recon"].item() == pytest.approx(sum(nll) / 2, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(kl + sum(nll) / 2, rel=1e-5)
    # the closed form agrees with torch.distributions
    q = torch.distributions.Normal(torch.tensor(mu), torch.tensor(var).sqrt())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    assert gaussian_kl(torch.tensor(mu), torch.tensor(var).log()).item() == pytest.approx(
        torch.distributions.kl_divergence(q, p).sum().item(), rel=1e-5
    )


def test_gaussian_likelihood_is_the_normal_density():
    model = tiny_vae(likelihood="gaussian", gaussian_variance="learned", gaussian_std=0.5)
    assert isinstance(model.log_std, nn.Parameter)
    logits, x = torch.randn(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    expected = -torch.distributions.Normal(torch.sigmoid(logits), 0.5).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(model.recon_nll(logits, x), expected, atol=1e-5)


def test_iwae_bound_is_tighter_than_the_elbo_and_equals_it_for_k1():
    torch.manual_seed(0)
    model = VAE(name="vae", input_shape=(1, 4, 4), hidden_dims=[16], latent_dim=3).eval()
    x = (
        torch.rand(4, 1, 4, 4).round().repeat(2000, 1, 1, 1)
    )  # many copies: averages of the estimates
    with torch.no_grad():
        neg_elbo = (
            torch.stack([model.loss_terms(x)["loss"] for _ in range(8)]).mean().item()
        )  # analytic KL
        k1 = -model.log_likelihood_iw(x, k=1)  # Monte Carlo log p(x|z) + log p(z) - log q(z|x)
        k100 = -model.log_likelihood_iw(x[:400], k=100).mean().item()
    # E[k=1 estimate] = ELBO: within 4 standard errors of the Monte Carlo mean
    assert abs(k1.mean().item() - neg_elbo) < 4 * k1.std().item() / math.sqrt(len(k1))
    assert k100 < neg_elbo - 0.05  # the IWAE bound is tighter: a smaller NLL than -ELBO


def test_grids_have_the_expected_shapes():
    model = tiny_vae(input_shape=(3, 8, 8), interp_steps=5)
    assert model.manifold(4).shape == (16, 3, 8, 8)
    x1, x2 = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    path = model.interpolate(x1, x2, steps=6)
    assert path.shape == (3, 6, 3, 8, 8)
    assert model.interpolate(x1[0], x2[0], steps=6).shape == (6, 3, 8, 8)
    # the walk starts and ends at the reconstructions (decoder mean at z = mu)
    with torch.no_grad():
        assert torch.allclose(path[:, 0], model.eval()(x1), atol=1e-6)
        assert torch.allclose(path[:, -1], model(x2), atol=1e-6)
    assert (
        model.sample(7).shape == (7, 3, 8, 8)
        and 0 <= model.sample(7).min() <= model.sample(7).max() <= 1
    )
    side = lambda n: n * (8 + 2) + 2  # noqa: E731 - make_grid's padding of 2
    assert model.sample_grid(16).shape == (3, side(4), side(4))
    assert model.sample_grid(10, interpolate=True).shape == (
        3,
        side(2),
        side(5),
    )  # no data: prior walks
    with pytest.raises(ConfigError):
        tiny_vae(latent_dim=3).manifold()
    with pytest.raises(ConfigError):
        model.sample_grid(4, label=1)


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_binarised_pixels_are_bernoulli_draws_of_the_grey_levels(mode):
    x = torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    b = binarize(x, mode)
    assert b.shape == x.shape and b.dtype == x.dtype and set(b.unique().tolist()) == {0.0, 1.0}
    # P(1) = x: pixels of grey level ~0.1 are 1 about 10% of the time, of ~0.9 about 90%
    for level in (0.1, 0.5, 0.9):
        near = (x - level).abs() < 0.02
        assert b[near].mean().item() == pytest.approx(level, abs=0.02)
    assert torch.equal(binarize(torch.zeros(2, 1, 3, 3), mode), torch.zeros(2, 1, 3, 3))
    assert torch.equal(binarize(torch.ones(2, 1, 3, 3), mode), torch.ones(2, 1, 3, 3))
    assert binarize(x, "none") is x


def test_fixed_binarisation_depends_on_the_image_only_and_dynamic_on_the_draw():
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fixed = binarize(x, "fixed")
    order = torch.randperm(64)
    assert torch.equal(binarize(x[order], "fixed"), fixed[order])  # any batch, any order
    assert torch.equal(binarize(x[:5], "fixed"), fixed[:5])
    assert not torch.equal(fixed[0], fixed[1])  # images do not share one pattern
    assert not torch.equal(binarize(x, "dynamic"), binarize(x, "dynamic"))


@pytest.mark.parametrize("mode", ["none", "fixed", "dynamic"])
def test_the_model_sees_binarised_images_in_the_modes_asked(monkeypatch, mode):
    """Training batches: fresh samples (dynamic) or the same ones (fixed); val/test: the same ones
    unless binarize=none."""
    model = tiny_vae(input_shape=(1, 8, 8), binarize=mode)
    seen = []
    monkeypatch.setattr(model, "loss_terms", lambda x: seen.append(x) or {"loss": x.sum()})
    monkeypatch.setattr(model, "eval_terms", lambda batch, stage: {})
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    batch = (x, torch.zeros(6, dtype=torch.long))
    model.iw_images = 0
    for stage in ("train", "train", "val", "test"):
        model.step(batch, stage)
    if mode == "none":
        assert all(s is x for s in seen)
        return
    assert all(set(s.unique().tolist()) <= {0.0, 1.0} for s in seen)
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[2], binarize(x, "fixed"))
    assert torch.equal(seen[0], seen[1]) == (mode == "fixed")


@pytest.mark.parametrize(
    "bad",
    [
        {"likelihood": "poisson"},
        {"gaussian_variance": "free"},
        {"beta": -1.0},
        {"iw_k": 0},
        {"binarize": "threshold"},
        {"binarize": "dynamic", "likelihood": "gaussian"},
    ],
)
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        tiny_vae(**bad)


RUNS = {
    "mlp-1x28x28": ("model.latent_dim=2", "model.kl_warmup_epochs=2"),
    "conv-3x32x32": ("model.net=conv", "model.channels=[8,16]", "dataset.shape=[3,32,32]"),
    "mlp-3x32x32": (
        "dataset.shape=[3,32,32]",
        "model.likelihood=gaussian",
        "model.gaussian_variance=learned",
    ),
    "conv-1x28x28": ("model.net=conv", "model.channels=[8,16]", "model.beta=4"),
    "mlp-binarised": ("model.binarize=dynamic",),
}


@pytest.mark.parametrize("name", RUNS)
def test_debug_fast_runs_log_elbo_nll_iw_and_images(tmp_path, name):
    run = run_train(tmp_path, *FAST, "model=vae", "model.iw_k=8", "model.iw_images=40", *RUNS[name])
    metrics = read_metrics(run)
    assert metrics["status"] == "finished", metrics
    m = metrics["metrics"]
    for key in (
        "train/loss",
        "val/elbo",
        "val/recon",
        "val/kl",
        "test/elbo",
        "test/recon",
        "test/kl",
        "test/nll_iw",
    ):
        assert math.isfinite(m[key]), key
    assert m["test/elbo"] == pytest.approx(-m["test/loss"])
    assert m["test/loss"] == pytest.approx(m["test/recon"] + m["test/kl"], rel=1e-4)
    assert m["test/kl"] >= 0
    acc = event_tags(run)
    tags = acc.Tags()
    for image in ("samples", "reconstructions", "interpolation", "attribute"):
        assert f"vis/{image}" in tags["images"], (image, tags["images"])
    assert ("vis/manifold" in tags["images"]) == ("model.latent_dim=2" in RUNS[name])
    for scalar in ("test/elbo", "test/nll_iw", "val/elbo", "train/loss"):
        assert scalar in tags["scalars"], scalar
    if "model.kl_warmup_epochs=2" in RUNS[name]:  # warm-up: the KL weight ramps up from 0
        weights = [e.value for e in acc.Scalars("train/kl_weight")]
        assert 0 <= weights[0] < weights[-1] < 0.5
    if "model.beta=4" in RUNS[name]:
        assert [e.value for e in acc.Scalars("train/kl_weight")][-1] == pytest.approx(4.0)


def test_sampling_from_a_checkpoint_is_a_one_liner(tmp_path):
    run = run_train(tmp_path, *FAST, "model=vae", "model.iw_images=0", "test_after_fit=false")
    model = VAE.load_from_checkpoint(
        read_metrics(run)["best_checkpoint"] or next(run.glob("checkpoints/*.ckpt")),
        map_location="cpu",
    )
    images = model.sample(5)
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() <= images.max() <= 1
    assert model.training  # sampling switches to eval mode and back
    assert model.sample_grid(9).shape == (3, 3 * 30 + 2, 3 * 30 + 2)
