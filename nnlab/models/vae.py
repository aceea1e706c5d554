"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

    q(z|x) = N(mu(x), diag sigma^2(x))          the encoder outputs [mu, log sigma^2]
    z      = mu + sigma * eps, eps ~ N(0, I)    the reparameterisation trick
    p(z)   = N(0, I),  p(x|z) = Bernoulli(sigmoid(logits(z)))  or  N(mean(z), sigma_x^2)

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x)
    loss    = -ELBO = recon + kl   (nats per image: summed over pixels, averaged over the batch)

Training minimises recon + w * kl with w = beta * min(1, epochs_done / kl_warmup_epochs): beta-VAE
(Higgins et al. 2017) and the KL warm-up of Sonderby et al. (2016). The logged train/loss, val/loss
and test/loss are always the true -ELBO (w = 1), so runs and checkpoints compare honestly.

test/nll_iw is the importance-weighted estimate of -log p(x) (Burda et al. 2015, IWAE bound):
    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k,  z_k ~ q(z|x)
which tightens towards log p(x) as k grows (k = 1 is the ELBO itself).

Binarised data (`binarize`), the standard for likelihoods in nats: a Bernoulli decoder is a proper
likelihood only for 0/1 pixels, so the grey levels are read as probabilities and sampled.
    none     the grey levels themselves are the Bernoulli targets (a cross-entropy, no likelihood)
    dynamic  every training batch is sampled afresh, x_b ~ Bernoulli(x) (the usual protocol for
             VAE likelihoods, e.g. Burda et al. 2015); val/test images are sampled once, as `fixed`
    fixed    every image is sampled once and kept (a static binarisation, as the binarised MNIST of
             Salakhutdinov & Murray 2008): its uniforms come from a hash of the image and the pixel
             position, so an image is binarised the same way in any batch, epoch or run
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from nnlab import lightning_compat as compat
from nnlab import viz
from nnlab.errors import ConfigError, check_choice
from nnlab.models.autoencoders import AutoencoderBase
from nnlab.nets import build_decoder, build_encoder

LIKELIHOODS = ("bernoulli", "gaussian")
BINARIZE = ("none", "dynamic", "fixed")
_M31 = 0x7FFFFFFF  # hashes work on 31 bits: no int64 product below overflows
VARIANCES = ("fixed", "learned")
LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, one value per row (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def _mix31(h: torch.Tensor) -> torch.Tensor:
    """An integer hash of 31-bit values: xorshift-multiply rounds (multiplier 0x45d9f3b)."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _M31
    return h ^ (h >> 16)


def image_uniforms(x: torch.Tensor) -> torch.Tensor:
    """One number in [0, 1) per pixel of images x (B, ...) in [0, 1], fixed by the image's 8-bit
    content and the pixel's position: the same image gets the same numbers in any batch."""
    q = x.detach().mul(255).round().long().flatten(1)  # (B, D)
    pos = torch.arange(1, q.shape[1] + 1, device=x.device)
    key = ((q + 1) * _mix31(pos)).sum(1) & _M31  # (B,) a hash of the whole image
    u = _mix31((_mix31(key)[:, None] + pos * 0x9E3779B) & _M31)  # (B, D)
    return (u.double() / (_M31 + 1)).to(x.dtype).view_as(x)


def binarize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Grey images x in [0, 1] -> 0/1 images with P(1) = x: `fixed` (the same sample of each image
    every time) or `dynamic` (a fresh sample from torch's generator); `none` returns x."""
    if mode == "none":
        return x
    u = image_uniforms(x) if mode == "fixed" else torch.rand_like(x)
    return (u < x).to(x.dtype)


def check_options(hp) -> None:
    """One paragraph for the first bad VAE option (ConfigError)."""
    check_choice("model.likelihood", hp["likelihood"], LIKELIHOODS)
    check_choice("model.binarize", hp["binarize"], BINARIZE)
    if hp["binarize"] != "none" and hp["likelihood"] != "bernoulli":
        raise ConfigError(
            f"model.binarize={hp['binarize']} makes 0/1 images for a Bernoulli decoder; with "
            "model.likelihood=gaussian use model.binarize=none."
        )
    check_choice("model.gaussian_variance", hp["gaussian_variance"], VARIANCES)
    std, beta, warmup = hp["gaussian_std"], hp["beta"], hp["kl_warmup_epochs"]
    iw_k, iw_images = hp["iw_k"], hp["iw_images"]
    if not std > 0:
        raise ConfigError(
            f"model.gaussian_std={std} must be positive, e.g. model.gaussian_std=0.1."
        )
    if beta < 0 or warmup < 0:
        raise ConfigError(
            f"model.beta={beta} and model.kl_warmup_epochs={warmup} must be >= 0 (beta=1, "
            "kl_warmup_epochs=0 is the plain VAE)."
        )
    if int(iw_k) < 1 or (iw_images is not None and int(iw_images) < 0):
        raise ConfigError(
            f"model.iw_k={iw_k} must be >= 1 and model.iw_images={iw_images} >= 0 (0 skips "
            "test/nll_iw, null uses the whole test set)."
        )


class LatentSampling:
    """Sampling from a trained VAE (a mixin of VAE): prior samples, latent walks, the 2-D manifold,
    and the `nnlab sample` grid."""

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        with viz.eval_mode(self):
            return self.mean_image(self.decode_logits(z.to(self.device)))

    def sample(self, n: int = 64, z: torch.Tensor | None = None) -> torch.Tensor:
        """n images in [0, 1] (decoder means) for prior draws z ~ N(0, I)."""
        z = torch.randn(n, self.latent_dim, device=self.device) if z is None else z
        return self.decode_images(z)

    def sample_images(self) -> torch.Tensor:
        """Figure hook: the `samples` grid, from the same prior draws every epoch."""
        return self.sample(z=self.prior_z)

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Walk linearly from mu(x1) to mu(x2) in `steps` points (ends included) and decode.

        x1, x2: (C, H, W) -> (steps, C, H, W); or batches (B, C, H, W) -> (B, steps, C, H, W)."""
        single = x1.dim() == 3
        x1, x2 = (x.unsqueeze(0) if single else x for x in (x1, x2))
        with viz.eval_mode(self):
            z1, z2 = self.encode(x1.to(self.device)), self.encode(x2.to(self.device))
        t = torch.linspace(0, 1, steps, device=self.device).view(1, steps, 1)
        z = (1 - t) * z1.unsqueeze(1) + t * z2.unsqueeze(1)  # (B, steps, D)
        images = self.decode_images(z.flatten(0, 1)).unflatten(0, (len(x1), steps))
        return images[0] if single else images

    def manifold(self, n: int | None = None) -> torch.Tensor:
        """For latent_dim == 2: decode an n x n grid over the latent plane, at the N(0,1) quantiles
        0.05..0.95 (Kingma & Welling's figure 4). Returns (n*n, C, H, W), row-major, z2
        decreasing."""
        if self.latent_dim != 2:
            raise ConfigError(
                f"The manifold needs model.latent_dim=2 (this model has {self.latent_dim})."
            )
        n = self.manifold_size if n is None else int(n)
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
        z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
        return self.decode_images(torch.stack([z1, z2], dim=-1).view(-1, 2))

    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """One (3, H, W) image in [0, 1]: n prior samples, or (interpolate=True) rows of
        test image | interpolation | test image, interp_steps points per row."""
        if label is not None:
            raise ConfigError(
                "The VAE is unconditional: it cannot sample a given label. Leave the label out."
            )
        if not interpolate:
            return viz.grid(self.sample(n))
        n_rows, steps = max(1, n // self.interp_steps), self.interp_steps
        if self.datamodule is None:  # no data attached: walk between pairs of prior draws
            z1, z2 = torch.randn(2, n_rows, 1, self.latent_dim, device=self.device)
            t = torch.linspace(0, 1, steps, device=self.device).view(1, -1, 1)
            return viz.grid(self.sample(z=((1 - t) * z1 + t * z2).flatten(0, 1)), nrow=steps)
        x, _ = self.datamodule.images("test", 2 * n_rows)
        n_rows = len(x) // 2
        x = x[: 2 * n_rows]
        path = self.interpolate(x[:n_rows], x[n_rows:], steps)
        ends = torch.cat([x[:n_rows, None], path, x[n_rows:, None]], 1)
        cols = ["image A", *(f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()), "image B"]
        return viz.labelled(viz.grid(ends.flatten(0, 1), nrow=steps + 2), x.shape[-2:], cols=cols)


class VAE(LatentSampling, AutoencoderBase):
    """Gaussian encoder, Bernoulli or Gaussian decoder; -ELBO, samples, interpolations, IWAE NLL."""

    def __init__(
        self,
        name: str = "vae",
        net: str = "mlp",
        hidden_dims=(512, 256),
        latent_dim: int = 20,
        likelihood: str = "bernoulli",
        binarize: str = "none",
        gaussian_variance: str = "fixed",
        gaussian_std: float = 0.1,
        beta: float = 1.0,
        kl_warmup_epochs: float = 0,
        iw_k: int = 100,
        iw_images: int | None = 1000,
        iw_chunk: int = 20000,
        attribute_source: int = 6,
        attribute_target: int = 4,
        attribute_alphas=(0.0, 0.5, 1.0, 1.5, 2.0),
        n_samples: int = 64,
        interp_steps: int = 8,
        manifold_size: int = 15,
        n_log_images: int = 16,
        **kwargs,
    ):
        kwargs.pop("loss", None)  # the base's reconstruction-loss option: the VAE's is `likelihood`
        super().__init__(
            name,
            net=net,
            hidden_dims=hidden_dims,
            latent_dim=latent_dim,
            loss="bce",
            n_log_images=n_log_images,
            **kwargs,
        )
        check_options(self.hparams)
        self.likelihood, self.binarization = likelihood, binarize
        self.beta, self.kl_warmup_epochs = float(beta), float(kl_warmup_epochs)
        self.iw_k, self.iw_images, self.iw_chunk = int(iw_k), iw_images, int(iw_chunk)
        self.attribute = (int(attribute_source), int(attribute_target))
        self.attribute_alphas = [float(a) for a in attribute_alphas]
        self.n_samples, self.interp_steps = int(n_samples), int(interp_steps)
        self.manifold_size = int(manifold_size)
        # the Gaussian decoder's sigma_x: one scalar for all pixels (fixed, or learned as in
        # sigma-VAE)
        log_std = torch.tensor(math.log(gaussian_std))
        if likelihood == "gaussian" and gaussian_variance == "learned":
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std, persistent=False)
        # fixed prior draws for the `samples` image, so epochs compare
        self.prior_z = torch.randn(
            self.n_samples, self.latent_dim, generator=torch.Generator().manual_seed(0)
        )
        self.nll_iw = MeanMetric()  # test/nll_iw: the mean over the first iw_images test images
        self.iw_seen = 0

    # -- the model ---------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def build_nets(self, net, widths, latent_dim):
        """q(z|x) outputs 2 * latent_dim numbers, [mu, log sigma^2]; p(x|z) is the base's
        decoder."""
        return (
            build_encoder(net, self.input_shape, widths, 2 * latent_dim),
            build_decoder(net, latent_dim, widths, self.input_shape),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code used for embeddings and interpolations: the posterior mean mu."""
        return self.posterior(x)[0]

    def reparameterise(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def mean_image(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's mean E[x|z] in [0, 1] (both likelihoods put it through a sigmoid)."""
        return torch.sigmoid(logits)

    def recon_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, summed over pixels (nats)."""
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        else:
            log_std = self.log_std.clamp(min=math.log(1e-3))
            nll = (
                0.5 * LOG_2PI
                + log_std
                + (x - self.mean_image(logits)).pow(2) / (2 * (2 * log_std).exp())
            )
        return nll.flatten(-3).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in [0, 1]: the decoder mean at z = mu."""
        return self.mean_image(self.decode_logits(self.encode(x)))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One-sample estimate of -ELBO and its two terms, nats per image (batch means)."""
        mu, logvar = self.posterior(x)
        recon = self.recon_nll(self.decode_logits(self.reparameterise(mu, logvar)), x).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return {"loss": recon + kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def log_likelihood_iw(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """IWAE estimate of log p(x) per image (B,), with k importance samples from q(z|x).

        Images are processed in chunks so that at most `iw_chunk` decoder passes run at once."""
        k = self.iw_k if k is None else int(k)
        out = []
        per_chunk = max(1, self.iw_chunk // k)
        for xb in x.split(per_chunk):
            mu, logvar = self.posterior(xb)
            z = self.reparameterise(
                mu.expand(k, *mu.shape), logvar.expand(k, *logvar.shape)
            )  # (k, B, D)
            logits = self.decode_logits(z.flatten(0, 1)).unflatten(0, (k, len(xb)))
            log_w = (
                -self.recon_nll(logits, xb)  # log p(x|z)
                + gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))  # log p(z)
                - gaussian_log_density(z, mu, logvar)
            )  # log q(z|x)
            out.append(torch.logsumexp(log_w, dim=0) - math.log(k))
        return torch.cat(out)

    # -- the step ---------------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """beta, linearly warmed up from 0 over the first kl_warmup_epochs epochs (per step)."""
        trainer = compat.trainer_of(self)
        if self.kl_warmup_epochs <= 0 or trainer is None:
            return self.beta
        n = trainer.num_training_batches
        epochs = self.batch_index / n if math.isfinite(n) and n > 0 else self.current_epoch
        return self.beta * min(1.0, epochs / self.kl_warmup_epochs)

    def step(self, batch, stage: str) -> dict:
        """-ELBO and its terms (train/loss is always the true -ELBO); training minimises
        `objective` = recon + w * kl while the KL weight w is not 1; val/test add the ELBO, and
        test the IWAE estimate of -log p(x) on the first iw_images test images. With
        model.binarize, all of it is measured on the binarised images."""
        mode = "fixed" if stage != "train" and self.binarization == "dynamic" else self.binarization
        x = binarize(batch[0], mode)
        terms = super().step((x, *batch[1:]), stage)  # loss, recon, kl (+ mse, pca_mse: val/test)
        if stage == "train":
            weight = self.kl_weight()
            if weight != 1.0:
                terms["objective"] = terms["recon"] + weight * terms["kl"]
                terms["kl_weight"] = weight
            return terms
        terms["elbo"] = -terms["loss"]
        limit = len(x) if self.iw_images is None else int(self.iw_images) - self.iw_seen
        limit = max(0, min(len(x), limit))
        if stage == "test" and limit:
            self.iw_seen += limit
            self.nll_iw.update(-self.log_likelihood_iw(x[:limit]))
            terms["nll_iw"] = self.nll_iw
        return terms

    def on_test_epoch_start(self):
        self.iw_seen = 0
