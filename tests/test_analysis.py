"""The test-time analyses (calibration, clustering, saliency, GAN mode coverage) on tiny runs,
adversarial training through `nnlab train`, and the saliency maps on a model whose evidence is
known."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, event_tags, read_metrics, run_train
from torch import nn

from nnlab.attacks import training_attack
from nnlab.errors import ConfigError
from nnlab.saliency import normalise, occlusion, saliency


@pytest.fixture(scope="module")
def robust_lenet(tmp_path_factory):
    """A tiny LeNet trained with PGD adversarial training (2 steps)."""
    overrides = ("model.adversarial.kind=pgd", "model.adversarial.steps=2")
    return run_train(tmp_path_factory.mktemp("lenet"), "model=lenet", *FAST, *overrides)


def test_classifier_run_logs_calibration_saliency_and_adversarial_accuracy(robust_lenet):
    m = read_metrics(robust_lenet)["metrics"]
    assert 0 <= m["test/ece"] <= 1 and 0 <= m["test/ece_scaled"] <= 1 and m["test/temperature"] > 0
    assert m["val/adv_acc"] <= m["val/acc"] and m["test/adv_acc"] <= m["test/acc"]
    images = event_tags(robust_lenet).Tags()["images"]
    assert "vis/reliability" in images and "vis/saliency" in images


def test_autoencoder_run_logs_clustering_next_to_pca(tmp_path):
    run = run_train(tmp_path, "model=ae", "model.latent_dim=8", *FAST)
    m = read_metrics(run)["metrics"]
    assert "test/pca_mse" in m
    for view in ("", "_pixels", "_pca"):
        for score in ("acc", "nmi", "ari"):
            assert -1 <= m[f"test/cluster_{score}{view}"] <= 1
        assert m[f"test/cluster_acc{view}"] >= 0.1  # at least chance for 10 classes


def test_gan_run_logs_mode_coverage(tmp_path, robust_lenet):
    run = run_train(
        tmp_path,
        "model=gan",
        *FAST,
        f"model.metrics.classifier_ckpt={robust_lenet}",
        "callbacks.mode_coverage.n=500",
        "model.metrics.n_samples=64",
    )
    m = read_metrics(run)["metrics"]
    assert 0 <= m["test/mode_entropy"] <= math.log(10) + 1e-6
    assert "vis/mode_coverage" in event_tags(run).Tags()["images"]


def test_training_attack_is_checked():
    assert training_attack(None)["kind"] == "none"
    assert training_attack({"kind": "pgd", "eps": 0.2})["steps"] == 7
    for bad, words in [
        ({"kind": "pdg"}, "Did you mean model.adversarial.kind=pgd"),
        ({"kind": "pgd", "eps": 2}, "in [0, 1]"),
        ({"kind": "pgd", "steps": 0}, "positive integer"),
        ({"kind": "pgd", "step_size": 0}, "positive number or null"),
        ({"epsilon": 0.1}, "no key 'epsilon'"),
        ({"kind": "pgd", "clean_weight": 1.5}, "clean_weight=1.5 must be a number in"),
    ]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            training_attack(bad)


def test_clean_weight_mixes_the_clean_and_the_attacked_loss():
    """clean_weight a: a L(x) + (1 - a) L(x_adv) (Goodfellow et al. 2015); 1 is plain training."""
    from nnlab.models.classifiers import LeNet

    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    spec = {"kind": "fgsm", "eps": 0.1}  # deterministic, so the three losses can be compared
    losses = {}
    for w in (0.0, 0.25, 1.0):
        torch.manual_seed(1)
        model = LeNet("lenet", adversarial={**spec, "clean_weight": w})
        losses[w] = float(model.step((x, y), "train")["loss"].detach())
    torch.manual_seed(1)
    clean = float(torch.nn.functional.cross_entropy(LeNet("lenet")(x), y).detach())
    assert losses[1.0] == pytest.approx(clean) and losses[0.0] > clean  # the attack raises it
    assert losses[0.25] == pytest.approx(0.25 * clean + 0.75 * losses[0.0])


class _TopLeft(nn.Module):
    """Class 1's logit is the sum of the top-left 4x4 pixels; class 0's is a constant."""

    def forward(self, x):
        evidence = x[:, :, :4, :4].sum((1, 2, 3))
        return torch.stack([torch.full_like(evidence, 4.0), evidence], 1)


def test_saliency_and_occlusion_find_the_evidence():
    x = torch.zeros(2, 1, 12, 12)
    x[:, :, :4, :4] = 1.0  # evidence for class 1 (logit 16 against 4)
    target = torch.ones(2, dtype=torch.long)
    sal = saliency(_TopLeft(), x, target)
    assert bool((sal[:, :4, :4] == 1).all()) and float(sal[:, 4:, :].abs().sum()) == 0
    occ = normalise(occlusion(_TopLeft(), x, target, patch=4, stride=2))
    assert occ.shape == (2, 12, 12)
    assert float(occ[:, :4, :4].min()) > 0.2 and float(occ[:, :2, :2].min()) == 1.0
    assert float(occ[:, 6:, :].max()) == 0 and float(occ[:, :, 6:].max()) == 0
