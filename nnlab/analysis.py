"""Test-time analyses as callbacks (configs/callbacks/default.yaml): each acts on the models it
applies to and leaves the others alone.

    Calibration   classifiers: test/ece (15 bins) and a reliability diagram; with temperature=true
                  also the temperature fitted on the validation split and test/ece_scaled
    Clustering    autoencoders and the vae: k-means (k = classes) on the test codes, on the raw
                  pixels and on PCA codes of the same dimension -> test/cluster_{acc,nmi,ari}
                  and the same with _pixels and _pca, next to test/pca_mse
    Saliency      classifiers: input-gradient and occlusion maps of fixed test images (an image)
    ModeCoverage  unconditional GANs: the LeNet classifier's class histogram of n samples and its
                  entropy test/mode_entropy (log 10 = every class equally often), next to FID

Scalars are computed on every rank (the same images, seeded: the same values); images are drawn
on rank 0 only.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from nnlab import viz
from nnlab.viz import charts


def _split(pl_module, split: str, n: int | None = None):
    """(float images in [0, 1] on the module's device, labels) of the first n of a split."""
    images, labels = pl_module.datamodule.images(split, n)
    return images.to(pl_module.device), labels.to(pl_module.device)


def _logits(trainer, pl_module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a whole val or test split through the datamodule's own loader and
    batch hooks, so images and variable-length sequences alike."""
    dm = trainer.datamodule
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            batch = dm.transfer_batch_to_device(batch, pl_module.device, 0)
            *inputs, y = dm.on_after_batch_transfer(batch, 0)
            logits.append(pl_module(*inputs))
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def _batched(fn, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def _classes(pl_module, k: int) -> list[str]:
    names = list(getattr(pl_module.datamodule, "classes", None) or [])
    return names if len(names) == k else [str(i) for i in range(k)]


def _is_classifier(pl_module) -> bool:
    from nnlab.models.classifiers import ClassifierBase

    return isinstance(pl_module, ClassifierBase) and pl_module.datamodule is not None


class Calibration(pl.Callback):
    """Expected calibration error and reliability diagram of a classifier's test set (Guo et al.
    2017); temperature=true fits T on the validation split and logs the ECE after scaling."""

    def __init__(self, n_bins: int = 15, temperature: bool = True):
        self.n_bins, self.temperature = int(n_bins), bool(temperature)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not _is_classifier(pl_module):
            return
        from nnlab.metrics.calibration import calibration_report

        logits, y = _logits(trainer, pl_module, "test")
        val = _logits(trainer, pl_module, "val") if self.temperature else (None, None)
        metrics, bins = calibration_report(logits, y, *val, n_bins=self.n_bins)
        for key, value in metrics.items():
            pl_module.log(f"test/{key}", value, on_epoch=True)
        if trainer.is_global_zero:
            eces = [metrics["ece"], metrics.get("ece_scaled")]
            panels = [
                charts.reliability_diagram(b, f"test, {name}", ece)
                for (name, b), ece in zip(bins.items(), eces)
            ]
            viz.log_image(trainer, "reliability", charts.hconcat(panels))


class Clustering(pl.Callback):
    """k-means on the test codes vs the raw pixels vs PCA with as many components as the code
    (Hinton & Salakhutdinov 2006): clustering accuracy (Hungarian), NMI and ARI of each."""

    def __init__(self, n: int | None = 10000, n_init: int = 3, seed: int = 0):
        self.n, self.n_init, self.seed = n, int(n_init), int(seed)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from nnlab.models.autoencoders import AutoencoderBase

        if not isinstance(pl_module, AutoencoderBase) or pl_module.datamodule is None:
            return
        from nnlab.metrics.clustering import clustering_report
        from nnlab.metrics.pca import PCA

        x, y = _split(pl_module, "test", self.n)
        pca = pl_module.pca
        if pca is None or pca.k != pl_module.latent_dim:
            train, _ = _split(pl_module, "train")
            pca = PCA(min(pl_module.latent_dim, x[0].numel())).fit(train)
        views = {
            "codes": _batched(pl_module.encode, x),
            "pixels": x.flatten(1),
            "pca": pca.encode(x),
        }
        k = int(pl_module.datamodule.num_classes)
        scores = clustering_report(views, y, k, self.n_init, self.seed)
        for key, value in scores.items():
            metric, view = key.split("_", 1)[1], key.split("_", 1)[0]
            suffix = "" if view == "codes" else f"_{view}"
            pl_module.log(f"test/cluster_{metric}{suffix}", value, on_epoch=True)


class Saliency(pl.Callback):
    """Input-gradient (Simonyan et al. 2014) and occlusion (Zeiler & Fergus 2014) maps of the
    first n test images of a classifier, with their true and predicted classes."""

    def __init__(self, n: int = 8, patch: int = 6, stride: int = 2):
        self.n, self.patch, self.stride = int(n), int(patch), int(stride)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from nnlab.data.datamodule import ImageDataModule

        images = isinstance(pl_module.datamodule, ImageDataModule)
        if not _is_classifier(pl_module) or not images or not trainer.is_global_zero or self.n < 1:
            return
        from nnlab import saliency

        x, y = _split(pl_module, "test", self.n)
        classes = _classes(pl_module, pl_module.num_classes)
        image = saliency.figure(pl_module, x, y, classes, self.patch, self.stride)
        viz.log_image(trainer, "saliency", image)


class ModeCoverage(pl.Callback):
    """How many of the classes an unconditional GAN generates: the class histogram of n samples
    as the LeNet of model.metrics.classifier_ckpt labels them, and its entropy in nats."""

    def __init__(self, n: int = 10000):
        self.n = int(n)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from nnlab.models.gans import AdversarialBase

        if not isinstance(pl_module, AdversarialBase) or pl_module.conditional:
            return
        clf = pl_module.quality.classifier()  # None (and one log line) without classifier_ckpt
        if clf is None:
            return
        from nnlab.metrics.clustering import class_histogram

        torch.manual_seed(0)
        samples = pl_module.sample(self.n)
        k = int(clf.num_classes)
        counts, h = class_histogram(_batched(clf.to(samples.device), samples).argmax(1), k)
        pl_module.log("test/mode_entropy", h, on_epoch=True)
        if trainer.is_global_zero:
            note = f"entropy {h:.3f} nats (log {k} = {math.log(k):.3f}: every class equally)"
            title = f"classes of {self.n} samples, as LeNet-5 labels them"
            image = charts.bar_chart(_classes(pl_module, k), counts, title, "samples", note)
            viz.log_image(trainer, "mode_coverage", image)


ANALYSES = {
    "nnlab.analysis.Calibration": Calibration,
    "nnlab.analysis.Clustering": Clustering,
    "nnlab.analysis.Saliency": Saliency,
    "nnlab.analysis.ModeCoverage": ModeCoverage,
}


def callbacks_for(cfg) -> list[pl.Callback]:
    """The analyses for `nnlab eval` of a run, so that it reproduces the run's test metrics: each
    with the settings in cfg["callbacks"] when given (plain values; only these four classes can be
    built, whatever a run folder says), else with the defaults of configs/callbacks/default.yaml."""
    from omegaconf import OmegaConf

    settings = {}
    for entry in ((cfg or {}).get("callbacks") or {}).values():
        target = entry.get("_target_") if hasattr(entry, "get") else None
        if target in ANALYSES:
            values = OmegaConf.to_container(OmegaConf.create(dict(entry)), resolve=True)
            settings[target] = {k: v for k, v in values.items() if k != "_target_"}
    return [cls(**settings.get(target, {})) for target, cls in ANALYSES.items()]
