"""Restricted Boltzmann machines trained with contrastive divergence (Hinton 2002).

    energy       E(v, h) = -b.v - c.h - v^T W h
    free energy  F(v)    = -b.v - sum_j softplus(c_j + (v^T W)_j),   p(v) = exp(-F(v)) / Z
    hidden units p(h_j = 1 | v) = sigmoid(c_j + (v^T W)_j)
    CD-k         d log p(v) / dW  ~  <v h>_data - <v h>_model
                 = v0^T p(h|v0) - vk^T p(h|vk)   (vk: k Gibbs steps v -> h -> v from the data,
                   or from persistent chains: PCD, Tieleman 2008); db = v0 - vk, dc = p(h|v0) -
                   p(h|vk)

The parameters are updated by an SGD-with-momentum optimiser whose gradient is set to minus the CD
statistic (plus weight decay on W: L2, and optionally L1, which zeroes the weights a hidden unit
does not need and so localises its receptive field): Lightning's manual optimisation, no autograd.

    rbm     Bernoulli visible units: binarised images
    rbm_cf  softmax visible units over K rating levels for the items a user rated (Salakhutdinov,
            Mnih & Hinton 2007): one RBM per user, all sharing W, b, c; the predicted rating of an
            item is the expected level under the softmax given the user's hidden probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError

from nnlab import viz
from nnlab.data.datamodule import float_images
from nnlab.data.ratings import RatingsDataModule
from nnlab.errors import ConfigError, DataError, check_choice
from nnlab.models.base import NNLabModule


class RBMBase(NNLabModule):
    """The shared machinery: parameters, Gibbs steps, free energy, the CD update."""

    def __init__(
        self,
        name,
        n_hidden=256,
        cd_k=1,
        weight_decay=2e-4,
        l1_weight_decay=0.0,
        init_std=0.01,
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        if int(cd_k) < 1 or int(n_hidden) < 1:
            raise ConfigError(
                f"model.cd_k={cd_k} and model.n_hidden={n_hidden} must be positive integers, e.g. "
                "cd_k=1."
            )
        self.automatic_optimization = False  # the CD update is not the gradient of a loss
        self.n_hidden, self.cd_k = int(n_hidden), int(cd_k)
        self.weight_decay, self.l1_weight_decay, self.init_std = (
            float(weight_decay),
            float(l1_weight_decay),
            float(init_std),
        )
        self.W = self.b = self.c = None  # built by build(n_visible)

    def build(self, n_visible: int) -> None:
        self.W = nn.Parameter(torch.randn(n_visible, self.n_hidden) * self.init_std)
        self.b = nn.Parameter(torch.zeros(n_visible))  # visible biases
        self.c = nn.Parameter(torch.zeros(self.n_hidden))  # hidden biases

    # -- what a subclass defines ----------------------------------------------------------------
    def visible_probs(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def sample_visible(self, p: torch.Tensor, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def visible_data(self, batch, generator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v, mask): the visible vectors of a batch and which visible units exist (None: all)."""
        raise NotImplementedError

    # -- the model ---------------------------------------------------------------------------------
    def uniform(self, shape, generator=None) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=self.W.device)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.W.device).manual_seed(seed)

    def bernoulli(self, p: torch.Tensor, generator=None) -> torch.Tensor:
        return (self.uniform(p.shape, generator) < p).to(p.dtype)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.W + self.c)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + v.W_j), one value per row of v."""
        return -(v @ self.b) - F.softplus(v @ self.W + self.c).sum(-1)

    def gibbs_step(
        self, v: torch.Tensor, mask=None, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v -> h ~ p(h|v) -> v' ~ p(v|h); returns (v', p(v|h))."""
        h = self.bernoulli(self.hidden_probs(v), generator)
        p = self.visible_probs(h, mask)
        return self.sample_visible(p, generator), p

    def reconstruct(self, v: torch.Tensor, mask=None) -> torch.Tensor:
        """The mean-field reconstruction p(v | p(h|v))."""
        return self.visible_probs(self.hidden_probs(v), mask)

    def recon_error(self, v: torch.Tensor, mask=None) -> torch.Tensor:
        """Squared error of the mean-field reconstruction, per visible unit (per rated item for
        rbm_cf)."""
        err = (v - self.reconstruct(v, mask)).pow(2).sum()
        return err / (v.numel() if mask is None else mask.sum().clamp(min=1))

    @staticmethod
    def cd_statistics(v0, ph0, vk, phk) -> dict[str, torch.Tensor]:
        """Positive minus negative phase statistics, averaged over the batch."""
        n = len(v0)
        return {
            "W": (v0.T @ ph0 - vk.T @ phk) / n,
            "b": (v0 - vk).mean(0),
            "c": (ph0 - phk).mean(0),
        }

    def cd_gradient(
        self, v0, mask=None, generator=None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The CD-k (or PCD-k) estimate of d log p / d theta, and the chains' final state vk."""
        vk = self.negative_start(v0)
        for _ in range(self.cd_k):
            vk, _ = self.gibbs_step(vk, mask, generator)
        return self.cd_statistics(v0, self.hidden_probs(v0), vk, self.hidden_probs(vk)), vk

    def negative_start(self, v0: torch.Tensor) -> torch.Tensor:
        """Where the negative-phase chains start: the data (CD); subclasses may keep chains
        (PCD)."""
        return v0

    def set_gradients(self, stats: dict[str, torch.Tensor]) -> None:
        """Ascend the log-likelihood: .grad = -(CD statistic), plus weight decay (L2 and L1) on W
        only."""
        W = self.W.detach()
        self.W.grad = -stats["W"] + self.weight_decay * W
        if self.l1_weight_decay:
            self.W.grad += self.l1_weight_decay * W.sign()
        self.b.grad = -stats["b"]
        self.c.grad = -stats["c"]

    # -- the Lightning steps -----------------------------------------------------------------------
    def train_batch(self, batch) -> None:
        with torch.no_grad():
            v0, mask = self.visible_data(batch)
            stats, vk = self.cd_gradient(v0, mask)
            self.after_negative_phase(vk)
            opt = self.optimizers()
            opt.zero_grad()
            self.set_gradients(stats)
            opt.step()
            if self.logging_step:  # costs a pass: only on the steps that are logged
                self.log_terms("train", {"recon_error": self.recon_error(v0, mask)}, len(v0))

    def after_negative_phase(self, vk: torch.Tensor) -> None:
        pass

    def on_train_epoch_end(self):
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()


class RBM(RBMBase):
    """Bernoulli-Bernoulli RBM on binarised images (CD-k, or PCD-k with persistent=true)."""

    def __init__(
        self,
        name,
        persistent=False,
        binarize="threshold",
        threshold=0.5,
        gibbs_steps=1000,
        n_log_images=64,
        pll_seed=0,
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        check_choice("model.binarize", binarize, ("threshold", "stochastic"))
        self.persistent, self.binarize = bool(persistent), binarize
        self.threshold, self.gibbs_steps = float(threshold), int(gibbs_steps)
        self.n_log_images, self.pll_seed = int(n_log_images), int(pll_seed)
        self.build(math.prod(self.input_shape))
        self.chains: torch.Tensor | None = None  # the persistent chains' state (PCD)
        self.eval_generator: torch.Generator | None = None  # per val/test epoch, from pll_seed
        self.eval_position = 0  # where the next val/test batch starts in the split

    def visible_probs(self, h, mask=None):
        return torch.sigmoid(h @ self.W.T + self.b)

    def sample_visible(self, p, generator=None):
        return self.bernoulli(p, generator)

    def binarized(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Images in [0, 1] -> binary visible vectors (B, C*H*W)."""
        x = x.flatten(1)
        if self.binarize == "threshold":
            return (x > self.threshold).to(x.dtype)
        return self.bernoulli(x, generator)

    def visible_data(self, batch, generator=None):
        return self.binarized(batch[0], generator), None

    def negative_start(self, v0):
        if not self.persistent:
            return v0
        if self.chains is None or self.chains.shape != v0.shape:
            self.chains = v0.clone()  # PCD: the chains start at the first batch, then run on
        return self.chains

    def after_negative_phase(self, vk):
        if self.persistent:
            self.chains = vk

    def setup(self, stage: str) -> None:
        """Hinton's practical guide: start the visible biases at log(p_i / (1 - p_i)) of the
        training data (binarised as in training; stochastic: the mean intensity)."""
        if stage != "fit" or self.datamodule is None:
            return
        images, _ = self.datamodule.raw("train")
        on = torch.zeros(images[0].numel(), dtype=torch.float64, device=images.device)
        for chunk in images.split(4096):
            x = float_images(chunk).flatten(1)
            on += (x > self.threshold if self.binarize == "threshold" else x).sum(0).double()
        p = (on / len(images)).clamp(1e-3, 1 - 1e-3)
        self.b.data.copy_(torch.log(p / (1 - p)).float())

    # -- evaluation: reconstruction, free-energy gap, pseudo-log-likelihood ---------------------
    def pseudo_log_likelihood(self, v: torch.Tensor, generator=None) -> torch.Tensor:
        """D * log sigmoid(F(v~) - F(v)), v~ = v with one random unit flipped: a stochastic
        estimate of sum_i log p(v_i | v_-i) per image."""
        i = torch.randint(0, v.shape[1], (len(v),), device=v.device, generator=generator)
        flipped = v.clone()
        rows = torch.arange(len(v), device=v.device)
        flipped[rows, i] = 1 - flipped[rows, i]
        return v.shape[1] * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    def on_validation_epoch_start(self):
        self.eval_generator, self.eval_position = self.generator(self.pll_seed), 0

    on_test_epoch_start = on_validation_epoch_start

    @torch.no_grad()
    def step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """Reconstruction error, free energy and its gap to the training images at the same
        positions (binarised alike: overfitting shows as a growing gap), pseudo-log-likelihood."""
        g = self.eval_generator
        v, _ = self.visible_data(batch, g)
        train, _ = self.datamodule.raw("train")
        idx = torch.arange(self.eval_position, self.eval_position + len(v)) % len(train)
        self.eval_position += len(v)
        v_train = self.binarized(float_images(train[idx.to(train.device)]).to(v.device), g)
        free_energy = self.free_energy(v).mean()
        return {
            "recon_error": self.recon_error(v),
            "free_energy": free_energy,
            "free_energy_gap": free_energy - self.free_energy(v_train).mean(),
            "pseudo_ll": self.pseudo_log_likelihood(v, g).mean(),
        }

    # -- images ---------------------------------------------------------------------------------
    @torch.no_grad()
    def gibbs_chain(self, n: int, steps: int, seed: int = 0, snapshots: int = 0) -> torch.Tensor:
        """p(v|h) after `steps` Gibbs steps from Bernoulli(0.5) noise, as images (n, C, H, W);
        with snapshots > 0, (n, snapshots, C, H, W): each chain at log-spaced steps 1..steps."""
        g = self.generator(seed)
        v = self.bernoulli(torch.full((n, self.W.shape[0]), 0.5, device=self.W.device), g)
        last = max(1, snapshots - 1)
        keep = {max(1, round(steps ** (i / last))) for i in range(snapshots)}
        shots = []
        for t in range(1, steps + 1):
            v, p = self.gibbs_step(v, None, g)
            if t in keep:
                shots.append(p)
        if snapshots:
            return torch.stack(shots, 1).view(n, len(shots), *self.input_shape)
        return p.view(n, *self.input_shape)

    def filters(self, n: int) -> torch.Tensor:
        """The weights of the first n hidden units as images, each scaled to [0, 1]."""
        w = self.W.detach().T[:n]
        lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
        return ((w - lo) / (hi - lo).clamp(min=1e-8)).view(len(w), *self.input_shape)

    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False) -> torch.Tensor:
        """A (3, H, W) image in [0, 1] of Gibbs samples. interpolate=True shows Gibbs chains
        instead (no interpolation: each row is one chain, from noise to its sample). The RBM is
        unconditional: label must be None."""
        if label is not None:
            raise ConfigError(
                "model=rbm is unconditional: it cannot sample a given label. Leave the label out."
            )
        if interpolate:
            rows = max(1, math.isqrt(n))
            chains = self.gibbs_chain(rows, self.gibbs_steps, snapshots=max(2, n // rows))
            image = viz.grid(chains.flatten(0, 1), nrow=chains.shape[1])
            title = "each row: one Gibbs chain, from noise (left) to its sample (right)"
            return viz.labelled(image, self.input_shape[-2:], title=title)
        return viz.grid(self.gibbs_chain(n, self.gibbs_steps))

    def sample_images(self) -> torch.Tensor:
        return self.gibbs_chain(self.n_log_images, self.gibbs_steps)

    reconstruction_labels = ("input", "binarised", "reconstruction")

    def reconstruction_rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(up to 16) images | binarised | mean-field reconstructions."""
        x = x[:16]
        v, _ = self.visible_data((x, None), self.generator(self.pll_seed))
        shape = (len(v), *self.input_shape)
        return [x, v.view(shape), self.reconstruct(v).view(shape)]


class RBMCF(RBMBase):
    """RBM for collaborative filtering: K-way softmax visible units for the items a user rated.
    Measured by the RMSE over all held-out ratings of a split (pooled over batches and DDP ranks:
    the squared errors and counts are summed, then the root taken), next to the item-mean
    baseline."""

    def __init__(self, name, levels=(1, 2, 3, 4, 5), n_items=None, **kwargs):
        kwargs["input_shape"] = None  # the input is a user's ratings, not an image
        super().__init__(name, **kwargs)
        self.register_buffer("levels", torch.tensor([float(x) for x in levels]))
        self.n_levels = len(self.levels)
        # RMSE = sqrt(sum of squared errors / count), both summed over batches and ranks
        self.rmse = nn.ModuleDict(
            {f"{stage}_{kind}": MeanSquaredError(squared=False)
             for stage in ("val", "test") for kind in ("rbm", "item_mean")}
        )  # fmt: skip
        if n_items:
            self.build(int(n_items) * self.n_levels)

    @property
    def n_items(self) -> int:
        return self.W.shape[0] // self.n_levels

    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if dm is None:
            return
        if not isinstance(dm, RatingsDataModule):
            raise ConfigError(
                f"model=rbm_cf learns from user x item ratings, but dataset={dm.name} holds "
                "images. Use dataset=movielens (with dataset.data_dir) or "
                "dataset=synthetic_ratings."
            )
        if [float(x) for x in dm.levels] != self.levels.tolist():
            raise ConfigError(
                f"model.levels={self.levels.tolist()} differ from dataset.levels={dm.levels}; "
                "keep model.levels: ${dataset.levels}."
            )
        if self.W is None:  # the number of items is known once the ratings are read
            self.build(dm.n_items * self.n_levels)
            self.hparams["n_items"] = dm.n_items  # so that a checkpoint rebuilds the same shapes
        elif self.n_items != dm.n_items:
            raise DataError(
                f"This model has weights for {self.n_items} items, the dataset has {dm.n_items}."
            )
        if stage == "fit" and self.global_step == 0:
            self.init_biases(dm.ratings("train"))

    def init_biases(self, train) -> None:
        """The softmax biases at the log of each item's (smoothed) level frequencies."""
        flat = train.items.long().cpu() * self.n_levels + train.levels.long().cpu() - 1
        counts = torch.bincount(flat, minlength=self.W.shape[0]).float() + 1
        counts = counts.view(-1, self.n_levels)
        self.b.data.copy_((counts / counts.sum(1, keepdim=True)).log().flatten())

    # -- softmax visible units ---------------------------------------------------------------------
    def visible_data(self, batch, generator=None):
        ratings = batch[0].long()  # (B, n_items), level 1..K, 0 = not rated
        v = F.one_hot(ratings, self.n_levels + 1)[..., 1:].flatten(1).float()
        return v, (ratings > 0).float()

    def visible_probs(self, h, mask):
        logits = (h @ self.W.T + self.b).view(len(h), -1, self.n_levels)
        return (logits.softmax(-1) * mask[..., None]).flatten(1)

    def sample_visible(self, p, generator=None):
        p = p.view(len(p), -1, self.n_levels)
        u = self.uniform((*p.shape[:2], 1), generator)
        k = (p.cumsum(-1) < u * p.sum(-1, keepdim=True)).sum(-1).clamp(max=self.n_levels - 1)
        return (F.one_hot(k, self.n_levels) * (p.sum(-1, keepdim=True) > 0)).flatten(1).to(p.dtype)

    @torch.no_grad()
    def predict(self, ratings: torch.Tensor) -> torch.Tensor:
        """Expected rating of every item for each user, given the user's ratings (B, n_items)."""
        v, _ = self.visible_data((ratings,))
        logits = (self.hidden_probs(v) @ self.W.T + self.b).view(len(v), -1, self.n_levels)
        return logits.softmax(-1) @ self.levels

    # -- RMSE on held-out ratings, next to the item-mean baseline ----------------------------------
    @torch.no_grad()
    def step(self, batch, stage: str) -> dict:
        inputs, targets = batch
        held_out = targets > 0
        truth = self.levels[(targets.long() - 1).clamp(min=0)][held_out]
        baseline = self.datamodule.item_means.to(truth.device).expand_as(targets)[held_out]
        rbm, item_mean = self.rmse[f"{stage}_rbm"], self.rmse[f"{stage}_item_mean"]
        rbm.update(self.predict(inputs)[held_out], truth)
        item_mean.update(baseline, truth)
        return {"rmse": rbm, "rmse_item_mean": item_mean}
