"""LAPGAN (Denton, Chintala, Szlam & Fergus 2015): a Laplacian pyramid of adversarial networks.

The image's pyramid (nnlab/nets/lapgan.py) is I_0 -> I_1 -> ... -> I_K by 2x2 average pooling,
with the band-pass residuals h_k = I_k - u(I_{k+1}). Level K is a small GAN on the coarsest image
(7x7 for 28x28 data, 8x8 for 32x32); every finer level k is a conditional GAN whose generator
draws h_k from noise and the upsampled coarser image l_k = u(I_{k+1}), against a discriminator
D_k(h_k, l_k) that sees real residuals beside their real l_k. Each level plays its own game on the
real pyramid of the data (the GAN losses of nnlab/models/gans.py, summed over the levels: the
levels share no parameters, so one backward pass trains each exactly as on its own). Sampling
runs coarse to fine, each level conditioned on the level generated before it:

    I_K = G_K(z_K),   I_k = u(I_{k+1}) + G_k(z_k, u(I_{k+1}))

One optimiser per player covers every level (Adam is per parameter); the noise of all levels is
one vector, so fixed-noise samples, the generator's moving average (model.ema), `nnlab sample`
and the LeNet-feature FID work as for dcgan.
"""

from __future__ import annotations

import torch

from nnlab.errors import ConfigError
from nnlab.models.gans import AdversarialBase, discriminator_loss, diverged, generator_loss
from nnlab.nets.lapgan import PyramidDiscriminator, PyramidGenerator, lowpass, up


class LAPGAN(AdversarialBase):
    """Denton et al. (2015): per-level generators and discriminators, coarse to fine."""

    nets = ("lapgan",)

    def __init__(self, name, net="lapgan", class_conditional=False, **kwargs):
        self.conditional = bool(class_conditional)
        super().__init__(name, net=net, **kwargs)
        # the noise of every level is one vector: z_K, then one noise plane per residual level
        self.latent_dim = self.generator.noise_dim
        fixed = torch.randn(
            len(self.fixed_z), self.latent_dim, generator=torch.Generator().manual_seed(0)
        )
        self.fixed_z = fixed.to(self.fixed_z)

    def build_nets(self, net, g_dims, d_dims, projection: bool):
        if projection:
            raise ConfigError(
                "model.projection is not available for lapgan: its discriminators take the label "
                "as constant maps when model.class_conditional=true. Set model.projection=false."
            )
        shape = self.input_shape
        try:
            generator = PyramidGenerator(shape, self.latent_dim, g_dims, self.n_classes)
            return generator, PyramidDiscriminator(shape, d_dims, self.n_classes)
        except ValueError as err:
            raise ConfigError(
                f"The LAPGAN nets do not fit images of shape {list(shape)}: {err}. model.g_dims "
                "and model.d_dims hold one list per pyramid level, finest first, e.g. "
                "g_dims=[[32,32],[64,64],[256,512]] for 28x28 (levels 28, 14, 7)."
            ) from None

    # -- the real pyramid and the game of every level ------------------------------------------
    def real_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list]:
        """Images in [0, 1] -> (targets, conditions) per level, finest first: (h_k, u(I_{k+1}))
        for the residual levels, (I_K, None) for the coarsest; all in the nets' [-1, 1] scale."""
        low = lowpass(x * 2 - 1, self.generator.levels)
        conds = [up(coarse) for coarse in low[1:]]
        return [fine - c for fine, c in zip(low, conds)] + [low[-1]], conds + [None]

    def fakes(self, conds: list, y) -> list[torch.Tensor]:
        """Each level's generator output given the real conditions (training: levels apart)."""
        g = self.generator
        zs = g.split(self.noise(len(conds[0])))
        residuals = [g.residual(k, zs[k], conds[k], y) for k in range(g.levels - 1)]
        return residuals + [g.coarsest(zs[-1], y)]

    def train_batch(self, batch) -> None:
        x, y = batch
        y = y if self.conditional else None
        opt_g, opt_d = self.optimizers()
        targets, conds = self.real_levels(x)
        fakes = self.fakes(conds, y)
        d = self.discriminator
        levels = range(self.generator.levels)

        # every discriminator: maximise log D_k(h_k, l_k) + log(1 - D_k(G_k(z_k, l_k), l_k))
        real_logits = [d(k, targets[k], conds[k], y) for k in levels]
        fake_logits = [d(k, fakes[k].detach(), conds[k], y) for k in levels]
        d_loss = sum(
            discriminator_loss(r, f, self.real_target) for r, f in zip(real_logits, fake_logits)
        )
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        losses = {"d_loss": d_loss.detach()}

        iteration = self.batch_index
        if (iteration + 1) % self.d_steps == 0:
            d.requires_grad_(False)
            g_loss = sum(
                generator_loss(d(k, fakes[k], conds[k], y), self.loss_kind) for k in levels
            )
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.update_ema(iteration // self.d_steps)
            d.requires_grad_(True)
            losses["g_loss"] = g_loss.detach()

        self.guard_finite(losses, diverged(self))
        if self.logging_step:
            d_real = [torch.sigmoid(r.detach()).mean() for r in real_logits]
            d_fake = [torch.sigmoid(f.detach()).mean() for f in fake_logits]
            per_level = {f"d_fake_{s}": v for s, v in zip(self.generator.sides, d_fake)}
            scalars = {"d_real": sum(d_real) / len(d_real), "d_fake": sum(d_fake) / len(d_fake)}
            self.log_terms("train", {**losses, **scalars, **per_level}, len(x))

    def step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """val/test: the mean D_k(real) over the levels, on held-out real pyramids."""
        x, y = batch
        y = y if self.conditional else None
        targets, conds = self.real_levels(x)
        d_real = [
            torch.sigmoid(self.discriminator(k, t, c, y)).mean()
            for k, (t, c) in enumerate(zip(targets, conds))
        ]
        return {"d_real": sum(d_real) / len(d_real)}

    # -- the pyramid figure ---------------------------------------------------------------------
    @torch.no_grad()
    def pyramid_levels(self, n: int = 8) -> list[torch.Tensor]:
        """[I_K, h_{K-1}, I_{K-1}, ..., h_0, I_0] of the first n fixed noise vectors, coarse to
        fine, from the generator that makes the samples: images mapped to [0, 1], residuals to
        0.5 + h (grey is zero)."""
        z = self.fixed_z[:n]
        images = self.sampler.levels_of(z, self.labels_for(len(z)))
        out = [images[0].add(1).div(2)]
        for coarse, fine in zip(images, images[1:]):
            out += [0.5 + (fine - up(coarse)) / 2, fine.add(1).div(2)]
        return [im.clamp(0, 1) for im in out]
