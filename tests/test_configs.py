"""Every option of every config group composes, resolves and passes validation."""

from __future__ import annotations

from pathlib import Path

import nnlab.configs
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nnlab.config_check import validate

CONFIG_DIR = Path(nnlab.configs.__file__).parent
GROUPS = [
    "model",
    "dataset",
    "accelerator",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "experiment",
    "hparams_search",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
RESOLVABLE = ("model", "dataset", "trainer.max_epochs", "trainer.accelerator", "seed")
# options that compose only with a matching choice in another group (ratings are not images)
COMPANIONS = {
    ("dataset", "movielens"): ["model=rbm_cf"],
    ("dataset", "synthetic_ratings"): ["model=rbm_cf"],
    # sequences are read by lstm, series by the forecaster (issue 17)
    **{("dataset", d): ["model=lstm"] for d in ("uea", "japanese_vowels", "plaid")},
    **{("dataset", d): ["model=forecaster"] for d in ("airline", "sunspots", "co2")},
    ("model", "forecaster"): ["dataset=airline"],
}


def _compose(*overrides):
    with initialize_config_module("nnlab.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = _compose(f"{group}={option}", *COMPANIONS.get((group, option), []))
    for key in RESOLVABLE:  # resolve everything that does not need a running Hydra job
        node = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(node):
            OmegaConf.to_container(node, resolve=True)
    validate(cfg)


def test_groups_exist_and_defaults():
    cfg = _compose()
    assert cfg.model.name == "ae" and cfg.dataset.name == "fashion_mnist"
    assert cfg.trainer.accelerator == "auto"
    assert {o for g, o in OPTIONS if g == "dataset"} >= {
        "fashion_mnist",
        "mnist",
        "cifar10",
        "synthetic",
    }
    assert {o for g, o in OPTIONS if g == "accelerator"} >= {"auto", "cpu", "gpu"}
    assert {o for g, o in OPTIONS if g == "logger"} >= {"tensorboard", "csv", "none"}
    assert {o for g, o in OPTIONS if g == "debug"} >= {"fast", "overfit", "profile"}


def test_accelerator_presets_write_into_trainer():
    gpu = _compose("accelerator=gpu")
    assert (gpu.trainer.accelerator, gpu.trainer.devices, gpu.trainer.precision) == (
        "gpu",
        1,
        "bf16-mixed",
    )
    assert _compose("accelerator=cpu").trainer.accelerator == "cpu"
    assert (
        _compose("trainer.accelerator=gpu").trainer.accelerator == "gpu"
    )  # the plain override works too


def test_model_shape_follows_dataset():
    cfg = _compose("dataset=cifar10")
    assert list(cfg.model.input_shape) == [3, 32, 32]
    cfg = _compose("dataset=synthetic", "dataset.shape=[3,16,16]")
    assert list(cfg.model.input_shape) == [3, 16, 16]


def test_configs_ship_inside_the_package():
    """The YAML lives in the importable package nnlab.configs (so a non-editable install finds
    it)."""
    assert (CONFIG_DIR / "train.yaml").is_file() and (CONFIG_DIR / "model" / "ae.yaml").is_file()


def test_wheel_ships_every_yaml(tmp_path):
    """A non-editable install gets every YAML of configs/ inside the package (nnlab/configs/...)
    and every module of every sub-package (pyproject.toml lists the packages by name)."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = set(zipfile.ZipFile(next(tmp_path.glob("nnlab-*.whl"))).namelist())
    wanted = {
        "nnlab/configs/" + str(p.relative_to(root / "configs"))
        for p in (root / "configs").rglob("*.yaml")
    }
    wanted |= {
        "nnlab/" + str(p.relative_to(root / "nnlab")) for p in (root / "nnlab").rglob("*.py")
    }
    assert wanted and wanted <= names, sorted(wanted - names)


def test_adam_is_fused_unless_the_spec_says_otherwise():
    """Adam/AdamW get torch's fused kernel by default (several times faster on a CPU); an explicit
    fused/foreach in the spec, or another optimiser, is left as written."""
    import torch

    from nnlab.models.base import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert (
        build_optimizer({"_target_": "torch.optim.Adam", "lr": 1e-3}, params).defaults["fused"]
        is True
    )
    assert (
        build_optimizer({"_target_": "torch.optim.AdamW", "lr": 1e-3}, params).defaults["fused"]
        is True
    )
    assert not build_optimizer(
        {"_target_": "torch.optim.Adam", "lr": 1e-3, "foreach": True}, params
    ).defaults["fused"]
    assert (
        build_optimizer({"_target_": "torch.optim.Adam", "fused": False}, params).defaults["fused"]
        is False
    )
    assert not build_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1}, params).defaults.get(
        "fused"
    )
