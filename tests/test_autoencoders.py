"""The autoencoder family: smoke runs of every model, the penalties against hand computations,
the corruptions' noise levels, the PCA baseline against a direct SVD, and the logged analyses."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, event_tags, read_metrics, run_train

from nnlab.metrics.pca import PCA
from nnlab.models import autoencoders as ae
from nnlab.models.autoencoders import (
    AE,
    CAE,
    DAE,
    StackedAE,
    contractive_penalty_sigmoid,
    corrupt,
    jacobian_frobenius_sq,
    kl_sparsity,
    l1_sparsity,
    psnr,
)

TINY = ("model.latent_dim=4", "model.n_embed=32")


# -- every model, end to end -----------------------------------------------------------------------
# (ae mlp with a 2-d code, dae and stacked_ae run in the tests further down)
@pytest.mark.parametrize(
    "model, shape, extra",
    [
        ("ae", "[3,32,32]", ("model.net=conv", "model.channels=[8,16]")),
        ("sparse_ae", "[3,32,32]", ("model.latent_dim=64",)),
        ("cae", "[1,28,28]", ()),
    ],
)
def test_fast_run(tmp_path, model, shape, extra):
    run = run_train(tmp_path, *FAST, f"model={model}", f"dataset.shape={shape}", *TINY, *extra)
    metrics = read_metrics(run)
    assert metrics["status"] == "finished"
    m = metrics["metrics"]
    assert math.isfinite(m["test/loss"])
    assert math.isfinite(m["test/mse"]) and math.isfinite(m["test/pca_mse"])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (AE, {"net": "mlp"}),
        (AE, {"net": "conv", "channels": [4, 8]}),
        (ae.SparseAE, {"hidden_dims": []}),
        (DAE, {"net": "conv", "channels": [4], "corruption": "salt_pepper", "noise_level": 0.2}),
        (CAE, {"hidden_dims": []}),
        (CAE, {"net": "conv", "channels": [4]}),
        (StackedAE, {"hidden_dims": [12]}),
    ],
)
def test_shapes(cls, kwargs, shape):
    model = cls(cls.__name__.lower(), latent_dim=5, input_shape=shape, **kwargs)
    x = torch.rand(3, *shape)
    assert model.encode(x).shape == (3, 5)
    recon = model(x)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
    terms = model.batch_terms((x, torch.tensor([0, 1, 2])))
    assert terms["loss"].ndim == 0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()


def test_event_file_has_the_analyses(tmp_path):
    run = run_train(tmp_path, *FAST, "model=ae", "model.latent_dim=2", "model.n_embed=40")
    acc = event_tags(run)
    tags = acc.Tags()
    assert {"vis/reconstructions", "vis/latent"} <= set(tags["images"])
    assert {"test/mse", "test/pca_mse"} <= set(tags["scalars"])
    # the embedding projector: codes, labels and thumbnails of the test images
    projector = (run / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test_codes' in projector and "sprite" in projector
    tsv = next(run.rglob("tensors.tsv")).read_text().strip().splitlines()
    assert len(tsv) == 40 and len(tsv[0].split("\t")) == 2
    # the reconstructions grid: blocks of 8 inputs above their 8 reconstructions (16 images of 28
    # + padding: 4 rows), enlarged twice, a label left of each row
    image = acc.Images("vis/reconstructions")[-1]
    assert image.height == 2 * (4 * 30 + 2) and image.width > 2 * (8 * 30 + 2)


# -- the penalties against hand computations -------------------------------------------------------
def test_kl_sparsity_by_hand():
    h = torch.tensor([[0.1, 0.5], [0.3, 0.7]])  # rho_hat = [0.2, 0.6]
    rho = 0.25
    penalty, rho_hat = kl_sparsity(h, rho)
    by_hand = sum(
        rho * math.log(rho / r) + (1 - rho) * math.log((1 - rho) / (1 - r)) for r in (0.2, 0.6)
    )
    assert torch.allclose(rho_hat, torch.tensor([0.2, 0.6]))
    assert penalty.item() == pytest.approx(by_hand, rel=1e-5)
    assert kl_sparsity(torch.full((3, 4), 0.25), rho)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_l1_sparsity_by_hand():
    h = torch.tensor([[0.1, -0.5, 0.2], [0.3, 0.7, 0.0]])
    assert l1_sparsity(h).item() == pytest.approx(((0.1 + 0.5 + 0.2) + (0.3 + 0.7)) / 2)
    model = ae.SparseAE(
        "sparse_ae",
        sparsity="l1",
        l1_weight=0.1,
        hidden_dims=[],
        latent_dim=6,
        input_shape=(1, 3, 3),
    )
    x = torch.rand(5, 1, 3, 3)
    terms = model.loss_terms(x)
    h = model.encode(x)
    assert terms["sparsity"].item() == pytest.approx(
        h.sum(1).mean().item(), rel=1e-6
    )  # sigmoid codes are >= 0
    assert terms["loss"].item() == pytest.approx(
        (terms["recon"] + 0.1 * terms["sparsity"]).item(), rel=1e-6
    )


def test_contractive_penalty_closed_form_and_autograd():
    torch.manual_seed(0)
    w, b = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]), torch.tensor([0.1, -0.2, 0.3])
    x = torch.tensor([[0.2, 0.4]])
    h = torch.sigmoid(x @ w.T + b)
    # by hand: dh_j/dx_i = h_j (1 - h_j) W_ji
    by_hand = sum((h[0, j] * (1 - h[0, j])) ** 2 * (w[j] ** 2).sum() for j in range(3))
    assert contractive_penalty_sigmoid(h, w).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # the closed form equals the autograd Jacobian, on a batch and a real layer
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    closed = contractive_penalty_sigmoid(torch.sigmoid(layer(x)), layer.weight)
    jac = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: torch.sigmoid(layer(v)), xi) for xi in x]
    )
    assert closed.item() == pytest.approx(jac.pow(2).sum((1, 2)).mean().item(), rel=1e-5)
    assert jacobian_frobenius_sq(lambda v: torch.sigmoid(layer(v)), x).item() == pytest.approx(
        closed.item(), rel=1e-5
    )


def test_cae_picks_the_closed_form_only_for_one_layer():
    one = CAE("cae", hidden_dims=[], latent_dim=3, input_shape=(1, 4, 4))
    deep = CAE("cae", hidden_dims=[8], latent_dim=3, input_shape=(1, 4, 4))
    assert one.closed_form and not deep.closed_form
    x = torch.rand(5, 1, 4, 4)
    assert one.contraction(x, one.encode(x)).item() == pytest.approx(
        jacobian_frobenius_sq(one.encode, x).item(), rel=1e-5
    )
    terms = deep.loss_terms(x)
    assert terms["loss"].item() == pytest.approx(
        (terms["recon"] + deep.lam * terms["contraction"]).item(), rel=1e-6
    )


# -- the corruptions have the requested noise level ------------------------------------------------
def test_corruption_levels():
    g = torch.Generator().manual_seed(0)
    x = torch.full((64, 3, 16, 16), 0.5)
    noise = corrupt(x, "gaussian", 0.3, g) - x
    assert noise.mean().item() == pytest.approx(0.0, abs=0.01)
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    masked = corrupt(x, "masking", 0.25, g)
    zero = masked == 0
    assert zero.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(zero.all(1), zero.any(1))  # a pixel is masked in all its channels
    sp = corrupt(x, "salt_pepper", 0.4, g)
    hit = sp != 0.5
    assert hit.float().mean().item() == pytest.approx(0.4, abs=0.01)
    assert (sp[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert set(sp.unique().tolist()) == {0.0, 0.5, 1.0}


def test_psnr():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x + 0.1, x).item() == pytest.approx(20.0, rel=1e-4)  # MSE 0.01 -> 20 dB


def test_dae_rows_are_clean_corrupted_reconstructed():
    model = DAE(
        "dae",
        latent_dim=3,
        hidden_dims=[8],
        input_shape=(1, 8, 8),
        corruption="masking",
        noise_level=0.5,
    )
    x = torch.rand(4, 1, 8, 8) + 0.1
    clean, noisy, recon = model.reconstruction_rows(x)
    assert torch.equal(clean, x) and (noisy == 0).any() and recon.shape == x.shape
    assert torch.equal(noisy, model.reconstruction_rows(x)[1])  # a fixed corruption: epochs compare


# -- PCA baseline ----------------------------------------------------------------------------------
def test_pca_equals_svd_reconstruction():
    torch.manual_seed(0)
    x = torch.randn(50, 3) @ torch.randn(3, 12) + 0.1 * torch.randn(50, 12) + 2.0
    k = 3
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    direct = (x - mean) @ vt[:k].T @ vt[:k] + mean
    pca = PCA(k).fit(x, chunk=16)  # chunked accumulation must not change the answer
    assert torch.allclose(pca.reconstruct(x), direct, atol=1e-4)
    assert pca.mse(x).item() == pytest.approx(torch.mean((direct - x) ** 2).item(), rel=1e-4)
    # the three methods agree: SVD of the data (N <= d), covariance eigh, randomised pca_lowrank
    tall = torch.randn(400, 6) @ torch.diag(torch.tensor([5.0, 3, 2, 1, 0.5, 0.2])) @ torch.randn(
        6, 20
    ) + 0.01 * torch.randn(400, 20)
    exact = PCA(3).fit(tall).mse(tall).item()
    assert PCA(3).fit(tall, exact_max_dim=0).mse(tall).item() == pytest.approx(exact, rel=1e-3)
    assert PCA(3).fit(tall[:15]).mse(tall[:15]).item() < PCA(3).fit(tall).mse(tall[:15]).item()
    images = (torch.rand(30, 1, 2, 3) * 255).to(torch.uint8)  # uint8 images are taken as /255
    as_float = images.float() / 255
    assert PCA(2).fit(images).mse(images).item() == pytest.approx(
        PCA(2).fit(as_float).mse(as_float).item(), rel=1e-5
    )


# -- the stacked autoencoder's greedy pre-training -------------------------------------------------
def test_greedy_pretraining_trains_each_layer_on_the_codes_below():
    torch.manual_seed(0)
    model = StackedAE(
        "stacked_ae",
        hidden_dims=[24],
        latent_dim=8,
        input_shape=(1, 6, 6),
        pretrain_epochs=3,
        pretrain_lr=1e-2,
        num_classes=3,
    )
    images = (torch.rand(256, 1, 6, 6) * 255).to(torch.uint8)
    first = [p.clone() for p in model.encoder[0].parameters()]
    calls = []
    model.encoder[1].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[1]))
    history = model.greedy_pretrain(images, batch_size=32)
    assert len(history) == 2 and all(len(h) == 4 for h in history)
    assert all(h[-1] < h[0] for h in history)  # each layer's reconstruction improved
    assert calls and set(calls) == {24}  # layer 2 saw the 24 codes of layer 1, never pixels
    assert not all(torch.equal(a, b) for a, b in zip(first, model.encoder[0].parameters()))
    assert bool(model.pretrained)


def test_stacked_ae_pretrain_flag(tmp_path):
    off = run_train(
        tmp_path,
        *FAST,
        "model=stacked_ae",
        "model.pretrain=false",
        "model.hidden_dims=[16]",
        *TINY,
        name="off",
    )
    assert not any("pretrain" in t for t in event_tags(off).Tags()["scalars"])
    assert 0 <= read_metrics(off)["metrics"]["test/acc"] <= 1
    on = run_train(
        tmp_path,
        *FAST,
        "model=stacked_ae",
        "dataset.shape=[3,32,32]",
        "model.hidden_dims=[16]",
        *TINY,
        name="on",
    )
    tags = event_tags(on).Tags()
    assert {"pretrain/layer1_loss", "pretrain/layer2_loss"} <= set(tags["scalars"])
    assert "vis/pretrain_reconstructions" in tags["images"]
    ckpt = torch.load(next((on / "checkpoints").glob("best*.ckpt")), weights_only=True)
    assert bool(ckpt["state_dict"]["pretrained"])  # a resumed run does not pre-train again


# -- sampling from a trained model (`nnlab sample`) ------------------------------------------------
def test_dae_run_and_sample_grid_from_checkpoint(tmp_path):
    run = run_train(
        tmp_path,
        *FAST,
        "model=dae",
        "dataset.shape=[3,32,32]",
        "model.corruption=masking",
        "model.noise_level=0.3",
        "model.latent_dim=4",
        "model.n_embed=0",
    )
    m = read_metrics(run)["metrics"]
    assert m["test/psnr"] > 0 and m["test/psnr_noisy"] > 0 and math.isfinite(m["test/pca_mse"])
    # clean | corrupted | output, in two blocks of 8, enlarged twice
    assert event_tags(run).Images("vis/reconstructions")[-1].height == 2 * (6 * 34 + 2)
    model = DAE.load_from_checkpoint(
        next((run / "checkpoints").glob("best*.ckpt")), weights_only=True
    )
    img = model.sample_grid(n=16)  # from the test images kept in the checkpoint
    # 2 blocks x (clean | corrupted | recon) rows of 8, enlarged twice, the rows labelled
    assert img.shape[:2] == (3, 2 * (2 * 3 * 34 + 2)) and img.shape[2] > 2 * (8 * 34 + 2)
    assert 0 <= img.min() and img.max() <= 1
    walk = model.sample_grid(n=16, interpolate=True)  # two rows of 8, under a title line
    assert walk.shape == (3, 2 * (2 * 34 + 2) + 14, 2 * (8 * 34 + 2))
    labels = model.stored_images[1]
    one = model.sample_grid(n=4, label=int(labels[0]))
    assert 2 * (4 * 34 + 2) < one.shape[2] < 2 * (8 * 34 + 2)


def test_bad_options_are_config_errors():
    from nnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="corruption"):
        DAE("dae", corruption="blur")
    with pytest.raises(ConfigError, match="sparsity"):
        ae.SparseAE("sparse_ae", sparsity="l2")
    with pytest.raises(ConfigError, match="net"):
        AE("ae", net="transformer")
