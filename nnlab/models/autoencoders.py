"""The autoencoder family. AutoencoderBase holds the shared plumbing (encode/decode, the
reconstruction loss, logging, and the analyses every autoencoder logs); each model adds its terms.

    ae          undercomplete:  L = recon(x, g(f(x)))
    sparse_ae   L = recon + beta * sum_j KL(rho || rho_hat_j)   (or + w * |h|_1)
    dae         denoising:      L = recon(x, g(f(corrupt(x))))
    cae         contractive:    L = recon + lambda * ||J_f(x)||_F^2
    stacked_ae  greedy layer-wise pre-training of a stack of autoencoders, then a softmax
                layer on top of the stacked encoder, fine-tuned with labels

Measured by every autoencoder: `test/mse` and the PCA baseline `test/pca_mse` (as many components
as the code, fitted on the training split). Its figures (nnlab/figures/autoencoders.py) draw from
the hooks here: `reconstructions` (reconstruction_rows), the `latent` scatter when latent_dim == 2
and the test codes in TensorBoard's embedding projector (encode).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from nnlab import viz
from nnlab.data.datamodule import float_images
from nnlab.errors import ConfigError, NNLabError, check_choice
from nnlab.metrics.pca import PCA
from nnlab.models.base import NNLabModule
from nnlab.nets import NETS, build_decoder, build_encoder

log = logging.getLogger("nnlab")

LOSSES = ("mse", "bce", "l1")
SPARSITIES = ("kl", "l1")
CORRUPTIONS = ("gaussian", "masking", "salt_pepper")
N_STORED = (
    256  # test images (uint8) kept in checkpoints: `sample_grid` works from a checkpoint alone
)


# -- the losses, as in the literature --------------------------------------------------------------
def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-pixel reconstruction loss; the decoder outputs logits, images are in [0, 1]."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, x)
    x_hat = torch.sigmoid(logits)
    return F.mse_loss(x_hat, x) if kind == "mse" else F.l1_loss(x_hat, x)


def kl_sparsity(
    h: torch.Tensor, rho: float, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j KL(rho || rho_hat_j), rho_hat_j = the mean activation of sigmoid unit j over the batch.
    Returns (penalty, rho_hat)."""
    rho_hat = h.mean(0).clamp(eps, 1 - eps)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum(), rho_hat


def l1_sparsity(h: torch.Tensor) -> torch.Tensor:
    """sum_j |h_j|, averaged over the batch."""
    return h.abs().sum(1).mean()


def contractive_penalty_sigmoid(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """||J_f(x)||_F^2 in closed form for one sigmoid layer h = s(W x + b) (Rifai et al. 2011):
    dh_j/dx_i = h_j (1 - h_j) W_ji, so ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2. Batch
    mean."""
    return ((h * (1 - h)) ** 2 @ weight.pow(2).sum(1)).mean()


def jacobian_frobenius_sq(f, x: torch.Tensor) -> torch.Tensor:
    """||J_f(x)||_F^2 for any encoder f by autograd (one backward pass per code unit). Batch mean.
    Works inside Lightning's inference mode too (val/test), where it needs a normal tensor."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        h = f(x)
        total = x.new_zeros(len(x))
        for j in range(h.shape[1]):
            (g,) = torch.autograd.grad(h[:, j].sum(), x, create_graph=True)
            total = total + g.pow(2).flatten(1).sum(1)
    return total.mean()


def corrupt(
    x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The denoising autoencoder's corruption q(x~ | x), drawn on x's device:
    gaussian     x + level * N(0, 1) per value (isotropic noise, not clipped)
    masking      a fraction `level` of the pixels set to 0
    salt_pepper  a fraction `level` of the pixels set to 0 or 1 (half each)."""

    def rand(shape):
        return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)

    if kind == "gaussian":
        return x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    pixels = (x.shape[0], 1, *x.shape[2:])  # a pixel is corrupted in all its channels
    hit = rand(pixels) < level
    if kind == "masking":
        return x.masked_fill(hit, 0.0)
    check_choice("model.corruption", kind, CORRUPTIONS)
    salt = (rand(pixels) < 0.5).to(x.dtype).expand_as(x)  # salt_pepper
    return torch.where(hit, salt, x)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE), per image,
    averaged."""
    mse = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (-10 * torch.log10(mse)).mean()


# -- the base class -------------------------------------------------------------------------
class AutoencoderBase(NNLabModule):
    reconstructs = True  # False: the model ends as a classifier (no reconstruction figures)

    def __init__(
        self,
        name,
        net="mlp",
        hidden_dims=(256,),
        channels=(32, 64),
        latent_dim=32,
        loss="mse",
        n_log_images=16,
        n_embed=1000,
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        check_choice("model.net", net, NETS)
        check_choice("model.loss", loss, LOSSES)
        self.loss_kind, self.n_log_images, self.n_embed = loss, int(n_log_images), int(n_embed)
        self.net_kind, self.latent_dim = net, int(latent_dim)
        widths = list(channels) if net == "conv" else list(hidden_dims)
        self.encoder, self.decoder = self.build_nets(net, widths, self.latent_dim)
        self.pca: PCA | None = None
        self.stored_images: tuple[torch.Tensor, torch.Tensor] | None = None  # uint8, labels

    def build_nets(
        self, net: str, widths: list[int], latent_dim: int
    ) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder); `widths` are the MLP widths (net=mlp) or the conv channels
        (net=conv)."""
        return (
            build_encoder(net, self.input_shape, widths, latent_dim),
            build_decoder(net, latent_dim, widths, self.input_shape),
        )

    # -- the model -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code (B, latent_dim): what the embeddings and the PCA comparison use."""
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x, in [0, 1]."""
        return torch.sigmoid(self.decode_logits(self.encode(x)))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'loss': the objective, ...other terms to log}; subclasses add their penalties."""
        recon = reconstruction_loss(self.decode_logits(self.encode(x)), x, self.loss_kind)
        return {"loss": recon}

    def batch_terms(self, batch) -> dict[str, torch.Tensor]:
        """The training objective from a whole (images, labels) batch; autoencoders ignore the
        labels."""
        return self.loss_terms(batch[0])

    def eval_terms(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """Figures measured on val/test besides the loss: the reconstruction MSE, and on test the
        PCA baseline on the same images."""
        x = batch[0]
        terms = {"mse": F.mse_loss(self(x), x)}
        if stage == "test" and self.pca is not None:
            terms["pca_mse"] = self.pca.mse(x)
        return terms

    def step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        terms = self.batch_terms(batch)
        if stage != "train":
            terms.update(self.eval_terms(batch, stage))
        return terms

    @torch.no_grad()
    def on_test_start(self):
        """Fit the PCA baseline on the training split, with as many components as the code."""
        if self.datamodule is None or not self.reconstructs:
            return
        train_images, _ = self.datamodule.raw("train")
        self.pca = PCA(min(self.latent_dim, train_images[0].numel())).fit(train_images)

    # -- what the figures draw, and `nnlab sample` -----------------------------------------------
    reconstruction_labels = ("input", "reconstruction")  # the rows' captions, in that order

    def reconstruction_rows(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """The rows of the `reconstructions` grid: inputs above their reconstructions."""
        return [x, self(x)] if self.reconstructs else None

    @torch.no_grad()
    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """A (3, H, W) image in [0, 1]: fixed test images above their reconstructions (blocks of 8
        per row), or with interpolate=True rows that decode the straight line between the codes of
        two test images. `label` picks the test images of one class."""
        with viz.eval_mode(self):
            if not interpolate:
                rows = self.reconstruction_rows(self.test_images(n, label))
                return viz.paired_grid(rows, labels=self.reconstruction_labels)
            steps = 8
            x = self.test_images(2 * max(1, n // steps), label)
            pairs = len(x) // 2
            z1, z2 = self.encode(x[:pairs]), self.encode(x[pairs : 2 * pairs])
            t = torch.linspace(0, 1, steps, device=self.device).view(1, steps, 1)
            z = (1 - t) * z1[:, None] + t * z2[:, None]  # (pairs, steps, latent)
            path = viz.grid(torch.sigmoid(self.decode_logits(z.flatten(0, 1))), nrow=steps)
            title = "each row: decoded points on the line between two test images' codes"
            return viz.labelled(path, x.shape[-2:], title=title)

    def test_images(self, n: int, label=None) -> torch.Tensor:
        """The first n test images (of class `label`) in [0, 1], from the datamodule or from the
        checkpoint."""
        if self.datamodule is not None:
            images, _ = self.datamodule.images("test", n, label)
        elif self.stored_images is not None:
            images, labels = self.stored_images
            if label is not None:
                images = images[labels == int(label)]
            images = float_images(images)
        else:
            raise NNLabError(
                "This model has no test images to reconstruct: load it from an nnlab checkpoint "
                "(they keep a few test images) or attach it to a trainer with its datamodule."
            )
        if len(images) == 0:
            raise ConfigError(f"label={label} has no test images; use a class index they hold.")
        return images[:n].to(self.device)

    def on_save_checkpoint(self, checkpoint):
        """A compact copy of the first test images (not a view: a view would save the whole
        split's storage)."""
        if self.datamodule is not None:
            images, labels = self.datamodule.raw("test")
            checkpoint["nnlab_test_images"] = {
                "images": images[:N_STORED].cpu().clone(),
                "labels": labels[:N_STORED].cpu().clone(),
            }

    def on_load_checkpoint(self, checkpoint):
        stored = checkpoint.get("nnlab_test_images")
        if stored is not None:
            self.stored_images = (stored["images"], stored["labels"])


class AE(AutoencoderBase):
    """Undercomplete autoencoder (Hinton & Salakhutdinov 2006): minimise recon(x, g(f(x))).
    net=mlp: fully connected; net=conv: strided convolutions down, transposed convolutions up."""


class SparseAE(AutoencoderBase):
    """Sparse autoencoder (Ng's CS294A notes): sigmoid code h = s(W x + b), possibly over-complete,
    L = recon + beta * sum_j KL(rho || rho_hat_j)   (sparsity=kl)
      = recon + l1_weight * sum_j |h_j|              (sparsity=l1)."""

    def __init__(self, name, sparsity="kl", rho=0.05, beta=1e-3, l1_weight=1e-3, **kwargs):
        super().__init__(name, **kwargs)
        check_choice("model.sparsity", sparsity, SPARSITIES)
        if not 0 < rho < 1:
            raise ConfigError(
                f"model.rho={rho} must be a target activation strictly between 0 and 1, e.g. "
                "model.rho=0.05."
            )
        self.sparsity, self.rho, self.beta, self.l1_weight = (
            sparsity,
            float(rho),
            float(beta),
            float(l1_weight),
        )

    def encode(self, x):
        return torch.sigmoid(self.encoder(x))

    def loss_terms(self, x):
        h = self.encode(x)
        recon = reconstruction_loss(self.decode_logits(h), x, self.loss_kind)
        if self.sparsity == "kl":
            penalty, rho_hat = kl_sparsity(h, self.rho)
            loss = recon + self.beta * penalty
        else:
            penalty, rho_hat = l1_sparsity(h), h.mean(0)
            loss = recon + self.l1_weight * penalty
        return {"loss": loss, "recon": recon, "sparsity": penalty, "rho_hat": rho_hat.mean()}


class DAE(AutoencoderBase):
    """Denoising autoencoder (Vincent et al. 2008): L = recon(x, g(f(x~))), x~ ~ corrupt(x).
    `noise_level` is sigma for gaussian and the fraction of pixels for masking / salt_pepper."""

    def __init__(self, name, corruption="gaussian", noise_level=0.5, **kwargs):
        super().__init__(name, **kwargs)
        check_choice("model.corruption", corruption, CORRUPTIONS)
        if noise_level < 0 or (corruption != "gaussian" and noise_level > 1):
            raise ConfigError(
                f"model.noise_level={noise_level} is out of range: sigma >= 0 for gaussian, a "
                "fraction in [0, 1] for masking and salt_pepper."
            )
        self.corruption, self.noise_level = corruption, float(noise_level)

    def corrupt(self, x, generator=None):
        return corrupt(x, self.corruption, self.noise_level, generator)

    def loss_terms(self, x):
        return {
            "loss": reconstruction_loss(
                self.decode_logits(self.encode(self.corrupt(x))), x, self.loss_kind
            )
        }

    def eval_terms(self, batch, stage):
        terms = super().eval_terms(batch, stage)
        x = batch[0]
        x_noisy = self.corrupt(x)
        terms["psnr"] = psnr(self(x_noisy), x)
        terms["psnr_noisy"] = psnr(x_noisy, x)
        return terms

    reconstruction_labels = ("clean", "corrupted", "reconstructed")

    def reconstruction_rows(self, x):
        """clean | corrupted | reconstructed, with a fixed corruption so epochs compare."""
        x_noisy = self.corrupt(x, torch.Generator(device=x.device).manual_seed(0))
        return [x, x_noisy, self(x_noisy)]


class CAE(AutoencoderBase):
    """Contractive autoencoder (Rifai et al. 2011): L = recon + lam * ||J_f(x)||_F^2, h = f(x)
    sigmoid. The Frobenius norm is in closed form for a one-layer encoder (hidden_dims: [] and
    net=mlp), and by autograd (one backward pass per code unit) for deeper ones."""

    def __init__(self, name, lam=1e-2, **kwargs):
        super().__init__(name, **kwargs)
        self.lam = float(lam)
        self.closed_form = self.net_kind == "mlp" and len(self.encoder.net) == 1

    def encode(self, x):
        return torch.sigmoid(self.encoder(x))

    def contraction(self, x, h):
        if self.closed_form:
            return contractive_penalty_sigmoid(h, self.encoder.net[0].weight)
        return jacobian_frobenius_sq(self.encode, x)

    def loss_terms(self, x):
        h = self.encode(x)
        recon = reconstruction_loss(self.decode_logits(h), x, self.loss_kind)
        penalty = self.contraction(x, h)
        return {"loss": recon + self.lam * penalty, "recon": recon, "contraction": penalty}


class StackedAE(AutoencoderBase):
    """Stacked autoencoder (Bengio et al. 2007): layer k is an autoencoder h_k = s(W_k h_{k-1} +
    b_k),
    trained greedily on the codes of layer k-1 (`pretrain_epochs` each, before fit); then the
    stacked encoder plus a softmax layer is fine-tuned with labels (cross-entropy). pretrain=false
    trains the same classifier from scratch. The code is the top layer (latent_dim units)."""

    reconstructs = False

    def __init__(
        self, name, pretrain=True, pretrain_epochs=2, pretrain_lr=1e-3, num_classes=10, **kwargs
    ):
        if kwargs.get("net", "mlp") != "mlp":
            raise ConfigError(
                "stacked_ae is a stack of fully connected autoencoders: leave model.net=mlp."
            )
        super().__init__(name, **kwargs)
        self.pretrain, self.pretrain_epochs, self.pretrain_lr = (
            bool(pretrain),
            int(pretrain_epochs),
            float(pretrain_lr),
        )
        self.head = nn.Linear(self.latent_dim, int(num_classes))
        self.register_buffer(
            "pretrained", torch.tensor(False)
        )  # in checkpoints: a resumed run skips it
        self.pretrain_history: list[list[float]] = []

    def build_nets(self, net, widths, latent_dim):
        dims = [
            self.input_shape[0] * self.input_shape[1] * self.input_shape[2],
            *widths,
            latent_dim,
        ]
        encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.Sigmoid()) for a, b in zip(dims, dims[1:])
        )
        decoders = nn.ModuleList(
            nn.Linear(b, a) for a, b in zip(dims, dims[1:])
        )  # logits of the layer below
        return encoders, decoders

    def encode(self, x):
        h = x.flatten(1)
        for layer in self.encoder:
            h = layer(h)
        return h

    def decode_logits(self, z):
        for k in reversed(range(len(self.decoder))):
            z = self.decoder[k](z)
            z = torch.sigmoid(z) if k > 0 else z
        return z.view(-1, *self.input_shape)

    def batch_terms(self, batch):
        x, y = batch
        logits = self.head(self.encode(x))
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean()}

    def eval_terms(self, batch, stage):
        return {}

    # -- greedy layer-wise pre-training ---------------------------------------------------------
    def on_fit_start(self):
        if self.pretrain and not bool(self.pretrained) and self.datamodule is not None:
            self.greedy_pretrain(self.datamodule.raw("train")[0], self.datamodule.batch_size)

    def greedy_pretrain(self, images: torch.Tensor, batch_size: int) -> list[list[float]]:
        """Train autoencoder k on the codes of layers 1..k-1 (frozen), for each k in turn. Returns
        (and keeps) each layer's mean reconstruction loss: before training, then after each epoch.
        `images`: the stored (uint8) training images, converted per batch."""
        self.train()
        data = images.flatten(1)  # layer 1 reads pixels
        generator = torch.Generator().manual_seed(0)
        self.pretrain_history = []
        for k, enc in enumerate(self.encoder, start=1):
            self.pretrain_history.append(self.pretrain_layer(k, data, batch_size, generator))
            with torch.no_grad():  # the codes of this layer are the data of the next
                data = torch.cat([enc(float_images(chunk)) for chunk in data.split(4096)])
        self.pretrained.fill_(True)
        return self.pretrain_history

    def pretrain_layer(self, k: int, data, batch_size: int, generator) -> list[float]:
        """Layer k as an autoencoder of `data` for pretrain_epochs: its loss before, after each
        epoch."""
        enc, dec = self.encoder[k - 1], self.decoder[k - 1]
        optimizer = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=self.pretrain_lr)

        def layer_loss(v):
            v = float_images(v)
            return reconstruction_loss(dec(enc(v)), v, self.loss_kind)

        with torch.no_grad():
            history = [float(layer_loss(data[: 4 * batch_size]))]
        for epoch in range(1, self.pretrain_epochs + 1):
            order = torch.randperm(len(data), generator=generator).to(data.device)
            total = 0.0
            for idx in order.split(batch_size):
                loss = layer_loss(data[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total = total + loss.detach()
            history.append(float(total / len(order.split(batch_size))))
            log.info(
                "pre-training layer %d, epoch %d: reconstruction loss %.5f", k, epoch, history[-1]
            )
            for logger in self.loggers:
                logger.log_metrics({f"pretrain/layer{k}_loss": history[-1]}, step=epoch)
        return history
