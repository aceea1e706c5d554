"""The GAN family. AdversarialBase holds the two-player game (Lightning 2 manual optimisation with
two optimisers, generator first), the fixed-noise samples, the NaN guard and the offline quality
metrics; the models are small subclasses.

    gan    Goodfellow et al. (2014): MLP generator G and discriminator D playing
               min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    dcgan  Radford et al. (2015): the same game with the convolutional nets of nnlab/nets/gan.py
    cgan   Mirza & Osindero (2014): G(z, y) and D(x, y) both see the label y

Discriminator loss: -[log D(x) + log(1 - D(G(z)))]; one-sided label smoothing replaces the real
target 1 by 1 - label_smoothing (Salimans et al. 2016). Generator loss:
    minimax         minimise  log(1 - D(G(z)))   (the game itself; its gradient vanishes when D
    wins)
    non_saturating  minimise -log D(G(z))        (same fixed point, strong gradients early on)
Images enter the nets in [-1, 1] (the generators end in tanh); the rest of nnlab sees [0, 1].

Quality (offline): `test/fid` is the Frechet distance between LeNet-5 features of N generated and N
test images, `test/fid_floor` that of N real training images vs the same test images, and for the
cgan `test/label_acc` the LeNet's accuracy on generated images against the requested labels.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from nnlab import lightning_compat as compat
from nnlab import viz
from nnlab.errors import ConfigError, NNLabError, check_choice
from nnlab.metrics.fid import GeneratorQuality
from nnlab.models.base import NNLabModule, build_optimizer
from nnlab.nets.gan import D_NORMS, GAN_NETS, build_gan_nets

GENERATOR_LOSSES = ("minimax", "non_saturating")
QUALITY_KEYS = ("val/fid", "val/label_acc")  # the monitors that need model.metrics.classifier_ckpt


class TrainingDiverged(NNLabError):
    kind = "training diverged"


# -- the losses, on discriminator logits l (D = sigmoid(l)) ---------------------------------------
def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: float = 1.0
) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))] as two binary cross-entropies; real_target < 1 is one-sided
    smoothing."""
    real = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, real_target)
    )
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """minimax: E[log(1 - D(G(z)))] = E[-softplus(l)];
    non_saturating: E[-log D(G(z))] = E[softplus(-l)]."""
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    check_choice("generator loss", kind, GENERATOR_LOSSES, error=ValueError)
    return F.softplus(-fake_logits).mean()  # non_saturating


def check_options(hp, nets=GAN_NETS) -> None:
    """One paragraph for the first bad GAN option (ConfigError), before anything is built."""
    check_choice("model.net", hp["net"], nets)
    check_choice("model.generator_loss", hp["generator_loss"], GENERATOR_LOSSES)
    check_choice("model.d_norm", hp["d_norm"], D_NORMS)
    if hp["net"] == "mlp" and hp["d_norm"] != "batch":
        raise ConfigError(
            f"model.d_norm={hp['d_norm']} is the dcgan discriminator's normalisation; with "
            "model.net=mlp leave it at batch, or use model.net=dcgan."
        )
    d_steps, label_smoothing, ema = hp["d_steps"], hp["label_smoothing"], hp["ema"]
    monitor, metrics = hp["monitor"], hp["metrics"]
    problems = {
        "d_steps": not (isinstance(d_steps, int) and d_steps >= 1),
        "label_smoothing": not 0.0 <= float(label_smoothing) < 0.5,
        "ema": not 0.0 <= float(ema) < 1.0,
        "monitor": monitor in QUALITY_KEYS and not (metrics or {}).get("classifier_ckpt"),
    }
    texts = {
        "d_steps": f"model.d_steps={d_steps!r} must be a positive integer (discriminator steps "
        "per generator step).",
        "label_smoothing": f"model.label_smoothing={label_smoothing} must be in [0, 0.5): the "
        "real target is 1 - label_smoothing.",
        "ema": f"model.ema={ema} must be in [0, 1): the decay of the generator's moving average "
        "(0 = off; 0.999 is usual).",
        "monitor": f"model.monitor={monitor} is measured only with a classifier: pass "
        "model.metrics.classifier_ckpt=<a lenet run folder>, or model.monitor=null to keep the "
        "last epoch.",
    }
    for key, bad in problems.items():
        if bad:
            raise ConfigError(texts[key])


def diverged(model):
    """The NaN guard's error for `model` (NNLabModule.guard_finite calls it with the losses of the
    first non-finite step, its training step and its batch of the epoch). The checkpoints on disk
    are from before it."""

    def error(values: dict[str, float], iteration: int, position: int) -> TrainingDiverged:
        bad = [f"train/{k}={v}" for k, v in values.items() if not math.isfinite(v)]
        ckpt = model.trainer.checkpoint_callback
        last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else ""
        kept = f"The last good checkpoint is kept: {last}." if last else "No checkpoint yet."
        return TrainingDiverged(
            f"The GAN diverged at training step {iteration + 1} (epoch {model.current_epoch}, "
            f"batch {position} of the epoch): {', '.join(bad)}. Training was stopped. {kept} Try "
            "a lower model.optimizer.lr, model.label_smoothing=0.1, or "
            "model.generator_loss=non_saturating."
        )

    return error


class GeneratorSampling:
    """Images from a GAN's generator (a mixin of AdversarialBase): noise, labels, the moving
    average of G, `nnlab sample`'s grid and what the figures draw."""

    # -- the generator --------------------------------------------------------------------------
    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    def labels_for(self, n: int, labels=None) -> torch.Tensor | None:
        """The labels a conditional generator needs (given, or cycling through the classes);
        None otherwise."""
        if not self.conditional:
            if labels is not None:
                raise ConfigError(
                    f"model {self.hparams.name} is unconditional: it cannot generate a requested "
                    "label (use model=cgan)."
                )
            return None
        if labels is None:
            return torch.arange(n, device=self.device) % self.n_classes
        labels = torch.as_tensor(labels, device=self.device).long()
        labels = labels.expand(n) if labels.dim() == 0 else labels
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ConfigError(
                f"label must be in 0..{self.n_classes - 1}, got {labels.tolist()[:8]}."
            )
        return labels

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator that makes the images: G's moving average when model.ema > 0, else G."""
        return self.generator if self.generator_ema is None else self.generator_ema

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """generator_ema <- d * generator_ema + (1 - d) * generator after G's step-th update, with
        d = min(ema, (1 + step) / (10 + step)) warming up so early averages do not drag the random
        init along; batch-norm statistics are copied."""
        if self.generator_ema is None:
            return
        decay = min(self.ema_decay, (1.0 + step) / (10.0 + step))
        ema_params = list(self.generator_ema.parameters())
        compat.lerp_(ema_params, list(self.generator.parameters()), 1.0 - decay)
        for mine, live in zip(self.generator_ema.buffers(), self.generator.buffers()):
            mine.copy_(live)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, batch_size=1000):
        """G(z, y) in [0, 1], with the generator in eval mode (batch norm: running statistics)."""
        with viz.eval_mode(self.sampler) as net:
            out = [
                net(z[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
                for i in range(0, len(z), batch_size)
            ]
        return torch.cat(out).add(1).div(2).clamp(0, 1)

    def sample(self, n: int, labels=None) -> torch.Tensor:
        """n new images (n, C, H, W) in [0, 1]; cgan: of the given labels (an int or n ints),
        else all classes in turn."""
        return self.generate(self.noise(n), self.labels_for(n, labels))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """G(z, y) in [0, 1] (the moving average of G when model.ema > 0)."""
        return self.sampler(z, labels).add(1).div(2)

    # -- images: `nnlab sample`, and what the figures draw (nnlab/figures/gans.py) ---------------
    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """One (3, H, W) image in [0, 1] for `nnlab sample`: a grid of n samples; cgan with
        label=None: the class grid (one row per class, the same noise in each column);
        interpolate: each row walks linearly from one noise vector to another."""
        if self.conditional and label is None and not interpolate:
            return self.class_grid(max(1, n // self.n_classes))
        if not interpolate:
            return viz.grid(self.sample(n, label))
        ncol = viz.side(n)
        nrow = max(1, n // ncol)
        t = torch.linspace(0, 1, ncol, device=self.device)[None, :, None]
        ends = self.noise(2 * nrow).view(nrow, 2, 1, self.latent_dim)
        z = ((1 - t) * ends[:, 0] + t * ends[:, 1]).reshape(-1, self.latent_dim)
        labels = None
        if self.conditional:
            labels = self.labels_for(nrow, label).repeat_interleave(ncol)
        image = viz.grid(self.generate(z, labels), nrow=ncol)
        title = "each row: G(z) along the line from one noise vector to another"
        return viz.labelled(image, self.input_shape[-2:], title=title)

    def class_grid(self, n_per_class: int = 8, z: torch.Tensor | None = None) -> torch.Tensor:
        """One row per class, the same noise vectors in every row."""
        z = self.noise(n_per_class) if z is None else z[:n_per_class]
        labels = torch.arange(self.n_classes, device=self.device).repeat_interleave(len(z))
        images = self.generate(z.repeat(self.n_classes, 1), labels)
        names = list(getattr(self.datamodule, "classes", None) or [])  # the rows' captions
        names = names if len(names) == self.n_classes else range(self.n_classes)
        return viz.labelled(viz.grid(images, nrow=len(z)), images.shape[-2:], rows=names)

    def sample_images(self) -> torch.Tensor:
        return self.generate(self.fixed_z, self.labels_for(len(self.fixed_z)))


class AdversarialBase(GeneratorSampling, NNLabModule):
    conditional = False
    nets = GAN_NETS  # the model.net values; a family with its own nets overrides build_nets

    def __init__(
        self,
        name,
        net="mlp",
        latent_dim=100,
        g_dims=(256, 512),
        d_dims=(512, 256),
        generator_loss="non_saturating",
        d_steps=1,
        label_smoothing=0.0,
        d_optimizer=None,
        num_classes=10,
        projection=False,
        d_norm="batch",
        ema=0.0,
        metrics=None,
        n_log_images=64,
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        check_options(self.hparams, self.nets)
        self.automatic_optimization = False
        self.latent_dim, self.loss_kind, self.d_steps = int(latent_dim), generator_loss, d_steps
        self.real_target = 1.0 - float(label_smoothing)
        self.n_classes = int(num_classes) if self.conditional else 0
        self.n_log_images = int(n_log_images)
        self.metrics_cfg = {"classifier_ckpt": None, "n_samples": 10000, "n_val_samples": 1000}
        self.metrics_cfg.update(metrics or {})
        self.quality = GeneratorQuality(self.metrics_cfg["classifier_ckpt"], self.skipped_note())
        self.d_norm = d_norm  # the dcgan discriminator's normalisation (build_nets)
        self.generator, self.discriminator = self.build_nets(net, g_dims, d_dims, bool(projection))
        # ema > 0: a moving average of G's weights generates every image (Yazici et al. 2019)
        self.ema_decay = float(ema)
        self.generator_ema = (
            copy.deepcopy(self.generator).requires_grad_(False) if self.ema_decay else None
        )
        # the same noise every epoch, so the `samples` images compare (saved with the model)
        noise = torch.randn(
            n_log_images, self.latent_dim, generator=torch.Generator().manual_seed(0)
        )
        self.register_buffer("fixed_z", noise)

    def build_nets(self, net, g_dims, d_dims, projection: bool):
        """(generator, discriminator): G(z, y) -> images in [-1, 1], D(x, y) -> logits."""
        return build_gan_nets(
            net,
            self.latent_dim,
            g_dims,
            d_dims,
            self.input_shape,
            self.n_classes,
            projection,
            self.d_norm,
        )

    def skipped_note(self) -> str:
        acc = ", test/label_acc" if self.conditional else ""
        return (
            "model.metrics.classifier_ckpt is not set: the quality metrics (val/fid, test/fid, "
            f"test/fid_floor{acc}) are skipped; train one with `nnlab train model=lenet` and pass "
            "model.metrics.classifier_ckpt=<its run folder>."
        )

    # -- the game (manual optimisation: D then, every d_steps batches, G) ------------------------
    optimizer_names = ("generator", "discriminator")  # the learning rates' tags: lr/generator

    def configure_optimizers(self):
        default = {"_target_": "torch.optim.Adam", "lr": 2e-4, "betas": [0.5, 0.999]}
        spec = dict(self.hparams.get("optimizer") or default)
        d_spec = dict(self.hparams.get("d_optimizer") or spec)
        optimizers = [
            build_optimizer(spec, self.generator.parameters()),
            build_optimizer(d_spec, self.discriminator.parameters()),
        ]
        if not self.hparams.get("scheduler"):
            return optimizers
        # the same schedule for G's and D's learning rates, stepped by training_step (per batch)
        # or on_train_epoch_end: manual optimisation steps its schedulers itself
        built = [self.build_scheduler(self.hparams.scheduler, opt, "step") for opt in optimizers]
        self.scheduler_interval = built[0][1]
        return optimizers, [scheduler for scheduler, _ in built]

    def step_schedulers(self, interval: str) -> None:
        if self.hparams.get("scheduler") and self.scheduler_interval == interval:
            for scheduler in self.lr_schedulers():
                scheduler.step()

    def train_batch(self, batch) -> None:
        x, y = batch
        real, y = x * 2 - 1, (y if self.conditional else None)
        opt_g, opt_d = self.optimizers()
        fake = self.generator(self.noise(len(real)), y)

        # discriminator: maximise log D(x) + log(1 - D(G(z)))
        real_logits, fake_logits = self.discriminator(real, y), self.discriminator(fake.detach(), y)
        d_loss = discriminator_loss(real_logits, fake_logits, self.real_target)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        losses = {"d_loss": d_loss.detach()}

        # generator, once per d_steps batches: the D just updated judges the same fakes
        iteration = self.batch_index
        if (iteration + 1) % self.d_steps == 0:
            self.discriminator.requires_grad_(False)
            g_loss = generator_loss(self.discriminator(fake, y), self.loss_kind)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.update_ema(iteration // self.d_steps)
            self.discriminator.requires_grad_(True)
            losses["g_loss"] = g_loss.detach()

        self.step_schedulers("step")
        self.guard_finite(losses, diverged(self))
        if self.logging_step:
            d_real, d_fake = (
                torch.sigmoid(real_logits.detach()),
                torch.sigmoid(fake_logits.detach()),
            )
            scalars = {**losses, "d_real": d_real.mean(), "d_fake": d_fake.mean()}
            self.log_terms("train", scalars, len(x))

    def optimizer_steps_for_batch(self, index: int) -> int:
        """D's step, and G's on every d_steps-th batch."""
        return 1 + ((index + 1) % self.d_steps == 0)

    # -- validation and test: D on held-out real images, and the offline quality metrics --------
    def step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.discriminator(x * 2 - 1, y if self.conditional else None)
        return {"d_real": torch.sigmoid(logits).mean()}

    def measure(self, stage: str, n: int, floor: bool = False) -> None:
        def generate(labels):
            return self.generate(self.noise(len(labels)), labels if self.conditional else None)

        values = self.quality(generate, self.datamodule, stage, n, floor, self.conditional)
        self.log_terms(stage, values)

    def on_train_epoch_end(self):
        self.step_schedulers("epoch")

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.measure("val", int(self.metrics_cfg["n_val_samples"]))

    def on_test_epoch_end(self):
        self.measure("test", int(self.metrics_cfg["n_samples"]), floor=True)


class GAN(AdversarialBase):
    """Goodfellow et al. (2014): MLP G and D (net=mlp)."""


class DCGAN(AdversarialBase):
    """Radford et al. (2015): transposed-conv G (BN, ReLU, tanh), strided-conv D (LeakyReLU),
    Adam(2e-4, beta1 0.5)."""

    def __init__(self, name, net="dcgan", g_dims=(128, 64), d_dims=(64, 128), **kwargs):
        super().__init__(name, net=net, g_dims=g_dims, d_dims=d_dims, **kwargs)


class CGAN(AdversarialBase):
    """Mirza & Osindero (2014): the one-hot label is concatenated to G's noise and D's input."""

    conditional = True
