"""The GAN family: every model trains end to end on both image shapes, the losses have the right
signs and values, the Frechet distance matches closed forms, the cgan listens to its label, the
offline metrics appear with a classifier (and are skipped with one log line without), and a NaN
loss stops the run with a clear message and a good checkpoint left behind."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, read_metrics, run_train

from nnlab.metrics.fid import fid_from_features, frechet_distance, gaussian_fit, sqrtm_psd
from nnlab.models import gans
from nnlab.models.gans import CGAN, DCGAN, discriminator_loss, generator_loss
from nnlab.nets.gan import DCGANDiscriminator

QUIET = ("model.n_log_images=16", "model.metrics.n_val_samples=64", "model.metrics.n_samples=128")


def lenet_checkpoint(path, shape=(1, 28, 28)):
    """An (untrained) LeNet-5 saved as nnlab saves it: enough for the feature-based metrics."""
    from nnlab.models.classifiers import LeNet

    hp = {"name": "lenet", "input_shape": list(shape), "num_classes": 10}
    torch.save({"state_dict": LeNet(**hp).state_dict(), "hyper_parameters": hp}, path)
    return path


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,shape",
    [
        ("gan", "[1,28,28]"),
        ("dcgan", "[1,28,28]"),
        ("cgan", "[3,32,32]"),
        ("gan", "[3,32,32]"),
        ("dcgan", "[3,32,32]"),
    ],
)
def test_fast_run_without_classifier(tmp_path, model, shape):
    run = run_train(tmp_path, *FAST, f"model={model}", f"dataset.shape={shape}", *QUIET)
    record = read_metrics(run)
    assert record["status"] == "finished"
    for key in (
        "train/d_loss",
        "train/g_loss",
        "train/d_real",
        "train/d_fake",
        "val/d_real",
        "test/d_real",
    ):
        assert math.isfinite(record["metrics"][key]), key
    assert 0 < record["metrics"]["train/d_real"] < 1
    assert not any("fid" in k for k in record["metrics"])  # no classifier: skipped ...
    log = (run / "train.log").read_text()
    assert log.count("model.metrics.classifier_ckpt is not set") == 1  # ... with exactly one line
    assert (run / "checkpoints" / "last.ckpt").is_file() and record["best_checkpoint"]


def test_cgan_dcgan_net_with_classifier_metrics(tmp_path):
    from conftest import event_tags

    ckpt = lenet_checkpoint(tmp_path / "lenet.ckpt")
    run = run_train(
        tmp_path,
        *FAST,
        "model=cgan",
        "model.net=dcgan",
        "model.g_dims=[16,8]",
        "model.d_dims=[8,16]",
        "model.generator_loss=minimax",
        "model.label_smoothing=0.1",
        "model.d_steps=2",
        "model.projection=true",
        "model.ema=0.9",
        f"model.metrics.classifier_ckpt={ckpt}",
        "model.monitor=val/fid",
        *QUIET,
    )
    m = read_metrics(run)["metrics"]
    for key in ("val/fid", "test/fid", "test/fid_floor"):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    assert 0 <= m["test/label_acc"] <= 1
    assert "best-epoch" in read_metrics(run)["best_checkpoint"]  # monitored val/fid
    images = event_tags(run).Tags()["images"]
    assert "vis/samples" in images and "vis/class_grid" in images


# -- the losses ----------------------------------------------------------------------------------
def test_generator_losses_sign_and_value():
    d_fake = torch.tensor([0.1, 0.25, 0.5])  # hand-made D(G(z))
    logits = torch.log(d_fake / (1 - d_fake))
    minimax = generator_loss(logits, "minimax")
    non_sat = generator_loss(logits, "non_saturating")
    assert minimax.item() == pytest.approx(
        torch.log(1 - d_fake).mean().item(), abs=1e-6
    )  # log(1 - D) < 0
    assert minimax.item() < 0
    assert non_sat.item() == pytest.approx(
        (-torch.log(d_fake)).mean().item(), abs=1e-6
    )  # -log D > 0
    assert non_sat.item() > 0
    # the point of non-saturating: when D rejects the fakes (D ~ 0), its gradient does not vanish
    confident = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(generator_loss(confident, "minimax"), confident)
    (g_ns,) = torch.autograd.grad(generator_loss(confident, "non_saturating"), confident)
    assert abs(g_mm.item()) < 1e-3 < 0.99 < abs(g_ns.item())
    assert g_mm.item() < 0 and g_ns.item() < 0  # both push D(G(z)) up


def test_discriminator_loss_and_smoothing():
    real, fake = torch.logit(torch.tensor([0.8])), torch.logit(torch.tensor([0.3]))
    assert discriminator_loss(real, fake).item() == pytest.approx(
        -(math.log(0.8) + math.log(0.7)), abs=1e-6
    )
    smoothed = discriminator_loss(real, fake, real_target=0.9).item()
    assert smoothed == pytest.approx(
        -(0.9 * math.log(0.8) + 0.1 * math.log(0.2) + math.log(0.7)), abs=1e-6
    )


# -- the Frechet distance --------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    sigma = a @ a.T + 0.1 * torch.eye(8, dtype=torch.float64)
    mu = torch.randn(8, generator=g, dtype=torch.float64)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    assert torch.allclose(sqrtm_psd(sigma) @ sqrtm_psd(sigma), sigma, atol=1e-10)
    # diagonal covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = (m1 - m2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum()
    assert frechet_distance(m1, torch.diag(v1), m2, torch.diag(v2)) == pytest.approx(
        expected.item(), rel=1e-10
    )
    # non-commuting full covariances: against scipy's general matrix square root
    linalg = pytest.importorskip("scipy.linalg")
    b = torch.randn(8, 8, generator=g, dtype=torch.float64)
    sigma2 = b @ b.T + 0.1 * torch.eye(8, dtype=torch.float64)
    covmean = linalg.sqrtm((sigma @ sigma2).numpy()).real
    ref = 8.0 + float(sigma.trace() + sigma2.trace()) - 2 * covmean.trace()
    assert frechet_distance(mu, sigma, mu - 1, sigma2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 5, generator=g)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    y = torch.randn(4000, 5, generator=g) * 2 + 1  # N(1, 4I) vs N(0, I): 5 * 1 + 5 * (2 - 1)^2 = 10
    assert fid_from_features(x, y) == pytest.approx(10.0, rel=0.1)
    mu, cov = gaussian_fit(y)
    assert cov.dtype == torch.float64 and cov.shape == (5, 5)


# -- the generators ------------------------------------------------------------------------------
@pytest.mark.parametrize("net,shape", [("mlp", (1, 28, 28)), ("dcgan", (3, 32, 32))])
def test_cgan_generator_depends_on_label(net, shape):
    torch.manual_seed(0)
    model = CGAN(
        "cgan",
        net=net,
        g_dims=[16, 8] if net == "dcgan" else [32],
        d_dims=[8, 16] if net == "dcgan" else [32],
        input_shape=shape,
        n_log_images=8,
    )
    z = torch.randn(4, model.latent_dim).repeat(2, 1)
    labels = torch.tensor([0] * 4 + [7] * 4)
    images = model.generate(z, labels)
    assert images.shape == (8, *shape) and 0 <= images.min() and images.max() <= 1
    other_noise = model.generate(torch.randn(4, model.latent_dim), labels[:4])
    label_effect, noise_effect = (
        (images[:4] - images[4:]).abs().mean(),
        (images[:4] - other_noise).abs().mean(),
    )
    assert (
        label_effect > 0.05 * noise_effect > 0
    )  # same noise, other label: another image (at init, as much as ~1/10 of new noise)
    assert model.sample(5, labels=3).shape == (5, *shape)
    grid = model.sample_grid(20)  # the class grid: 10 rows of 2
    assert grid.shape[0] == 3 and grid.shape[1] > grid.shape[2]
    assert model.sample_grid(16, label=2, interpolate=True).shape[0] == 3


@pytest.mark.parametrize("net,shape", [("mlp", (1, 28, 28)), ("dcgan", (3, 32, 32))])
def test_projection_discriminator_takes_the_label_at_its_features(net, shape):
    torch.manual_seed(0)
    dims = (
        dict(g_dims=[16, 8], d_dims=[8, 16]) if net == "dcgan" else dict(g_dims=[32], d_dims=[32])
    )
    concat = CGAN("cgan", net=net, input_shape=shape, **dims).discriminator
    proj = CGAN(
        "cgan", net=net, input_shape=shape, projection=True, **dims
    ).discriminator.eval()  # (no dropout)

    def first(d):
        return next(m for m in d.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))

    assert (
        first(concat).weight.shape[1] == first(proj).weight.shape[1] + 10
    )  # no label at the input
    x, y = torch.randn(6, *shape), torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        h = proj.net(x if net == "dcgan" else x.flatten(1)).flatten(1)
        expected = proj.head.fc(h).squeeze(1) + (proj.head.embed.weight[y] * h).sum(1)
        assert torch.allclose(proj(x, y), expected, atol=1e-6)  # fc(h) + <embed(y), h>
        proj.head.embed.weight.normal_()
        assert not torch.allclose(proj(x, y), proj(x, (y + 1) % 10))
    with pytest.raises(ValueError, match="conditional"):
        proj(x)


def test_generator_moving_average():
    torch.manual_seed(0)
    model = DCGAN("dcgan", g_dims=[16, 8], d_dims=[8, 16], input_shape=(1, 28, 28), ema=0.99)
    assert model.sampler is model.generator_ema and not any(
        p.requires_grad for p in model.generator_ema.parameters()
    )
    before = [p.clone() for p in model.generator_ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.update_ema(step=1000)  # past the warm-up: decay 0.99
    for old, new, live in zip(
        before, model.generator_ema.parameters(), model.generator.parameters()
    ):
        assert torch.allclose(new, 0.99 * old + 0.01 * live, atol=1e-6)
    model.update_ema(step=0)  # warm-up: decay min(0.99, 1/10) = 0.1, mostly the live weights
    for new, live in zip(model.generator_ema.parameters(), model.generator.parameters()):
        assert (new - live).abs().max() < 0.1 + 1e-6
    z = torch.randn(3, model.latent_dim)
    assert torch.allclose(
        model.generate(z), model.generator_ema.eval()(z).add(1).div(2).clamp(0, 1)
    )
    assert (
        DCGAN("dcgan", g_dims=[16, 8], d_dims=[8, 16], input_shape=(1, 28, 28)).generator_ema
        is None
    )
    with pytest.raises(gans.ConfigError, match="model.ema"):
        DCGAN("dcgan", g_dims=[16, 8], d_dims=[8, 16], input_shape=(1, 28, 28), ema=1.0)


@pytest.mark.parametrize("norm", ["batch", "spectral", "none"])
def test_discriminator_normalisations(norm):
    """batch: BN after every conv but the first; spectral: no BN, every conv/linear weight scaled
    to spectral norm ~1 (after a few power iterations in training mode); none: neither."""
    torch.manual_seed(0)
    d = DCGANDiscriminator((1, 28, 28), [8, 16], n_classes=10, projection=True, norm=norm)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert n_bn == (1 if norm == "batch" else 0)
    for _ in range(20):
        out = d(torch.randn(4, 1, 28, 28), torch.arange(4))
    assert out.shape == (4,)
    layers = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    sigma = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in layers]
    if norm == "spectral":
        assert all(abs(s - 1) < 0.05 for s in sigma), sigma
    else:
        assert max(sigma) < 0.9  # N(0, 0.02) weights: all well below 1
    with pytest.raises(gans.ConfigError, match="model.d_norm"):
        DCGAN("dcgan", input_shape=(1, 28, 28), d_norm="layer")
    with pytest.raises(gans.ConfigError, match="model.d_norm=spectral"):
        gans.GAN("gan", net="mlp", input_shape=(1, 28, 28), d_norm="spectral")


def test_a_learning_rate_schedule_steps_both_players_per_batch(tmp_path):
    """model.scheduler: the same schedule for G's and D's learning rates, stepped every batch
    (manual optimisation); here LinearLR down to 0 over the fit's batches (total_iters: auto)."""
    linear = "{_target_: torch.optim.lr_scheduler.LinearLR, start_factor: 1.0, end_factor: 0.0,"
    run = run_train(
        tmp_path,
        *FAST,
        "model=dcgan",
        "model.g_dims=[16,8]",
        "model.d_dims=[8,16]",
        *QUIET,
        f"model.scheduler={linear} total_iters: auto}}",
        "trainer.limit_train_batches=4",
    )
    assert read_metrics(run)["status"] == "finished"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    states = ckpt["lr_schedulers"]
    assert len(states) == 2 and [s["total_iters"] for s in states] == [4, 4]
    assert [s["last_epoch"] for s in states] == [4, 4]  # stepped once per batch
    assert [group["lr"] for opt in ckpt["optimizer_states"] for group in opt["param_groups"]] == [
        0.0,
        0.0,
    ]


def test_unconditional_sampling_and_label_error():
    model = DCGAN("dcgan", g_dims=[16, 8], d_dims=[8, 16], input_shape=(1, 28, 28))
    grid = model.sample_grid(16)
    assert grid.shape == (3, 4 * 30 + 2, 4 * 30 + 2) and 0 <= grid.min() and grid.max() <= 1
    walk = model.sample_grid(16, interpolate=True)  # the same grid, enlarged, under a title line
    assert walk.shape == (3, 2 * grid.shape[1] + 14, 2 * grid.shape[2])
    with pytest.raises(gans.ConfigError, match="unconditional"):
        model.sample(4, labels=1)


# -- the NaN guard -------------------------------------------------------------------------------
def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = gans.generator_loss, []

    def poisoned(logits, kind="non_saturating"):
        calls.append(1)
        loss = real_loss(logits, kind)
        return loss * float("nan") if len(calls) == 5 else loss  # step 5 = epoch 1, batch 1

    monkeypatch.setattr(gans, "generator_loss", poisoned)
    with pytest.raises(SystemExit):
        run_train(
            tmp_path,
            *FAST,
            "model=gan",
            "model.g_dims=[32]",
            "model.d_dims=[32]",
            "trainer.max_epochs=3",
            "steps_per_execution=1",  # auto would time G's loss on a copy first (test_steps: N=4)
            *QUIET,
        )
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "failed"
    assert "training step 5" in record["error"] and "train/g_loss=nan" in record["error"]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in record["error"]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0  # saved at the end of epoch 0, before the NaN
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )
