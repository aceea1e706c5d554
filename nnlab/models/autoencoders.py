"""The autoencoder family. AutoencoderBase holds the shared plumbing (encode/decode, the
reconstruction loss, logging, the reconstructions grid); each model adds its own terms.

    ae   undercomplete autoencoder:  L = recon(x, g(f(x)))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnlab import viz
from nnlab.errors import ConfigError
from nnlab.models.base import NNLabModule
from nnlab.nets import NETS, build_decoder, build_encoder

LOSSES = ("mse", "bce", "l1")


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-pixel reconstruction loss; the decoder outputs logits, images are in [0, 1]."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, x)
    x_hat = torch.sigmoid(logits)
    return F.mse_loss(x_hat, x) if kind == "mse" else F.l1_loss(x_hat, x)


class AutoencoderBase(NNLabModule):
    family = "autoencoder"

    def __init__(self, name, net="mlp", hidden_dims=(256,), latent_dim=32, loss="mse", n_log_images=16, **kwargs):
        super().__init__(name, **kwargs)
        if net not in NETS:
            raise ConfigError(f"model.net='{net}' is unknown; use one of {', '.join(NETS)}.")
        if loss not in LOSSES:
            raise ConfigError(f"model.loss='{loss}' is unknown; use one of {', '.join(LOSSES)}.")
        self.loss_kind, self.n_log_images = loss, int(n_log_images)
        self.encoder = build_encoder(net, self.input_shape, hidden_dims, latent_dim)
        self.decoder = build_decoder(net, latent_dim, hidden_dims, self.input_shape)

    # -- the model ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
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

    # -- the Lightning steps ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, _ = batch
        terms = self.loss_terms(x)
        for key, value in terms.items():
            self.log(f"train/{key}", value, on_step=True, on_epoch=False, prog_bar=key == "loss", batch_size=len(x))
        return terms["loss"]

    def _eval_step(self, batch, stage: str):
        x, _ = batch
        terms = self.loss_terms(x)
        x_hat = self(x)
        terms["mse"] = F.mse_loss(x_hat, x)
        for key, value in terms.items():
            self.log(f"{stage}/{key}", value, on_epoch=True, prog_bar=stage == "val" and key == "loss", batch_size=len(x))
        return terms

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    @torch.no_grad()
    def on_validation_epoch_end(self):
        if self.datamodule is None or self.trainer.sanity_checking:
            return
        x, _ = self.datamodule.fixed_batch("val", self.n_log_images)
        x = x.to(self.device)
        viz.log_image(self, "reconstructions", viz.rows(x, self(x)))

    @torch.no_grad()
    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """`nnlab sample`: n test images, each row of inputs above its row of reconstructions."""
        x, _ = self.datamodule.fixed_batch("test", n)
        x = x.to(self.device)
        cols = math.ceil(math.sqrt(len(x)))
        pad = (-len(x)) % cols  # white tiles complete the last row
        x = torch.cat([x, torch.ones((pad, *x.shape[1:]), device=x.device)])
        pairs = [part for i in range(0, len(x), cols) for part in (x[i : i + cols], self(x[i : i + cols]))]
        return viz.grid(torch.cat(pairs), nrow=cols)


class AE(AutoencoderBase):
    """Undercomplete autoencoder (Hinton & Salakhutdinov 2006): minimise recon(x, g(f(x)))."""
