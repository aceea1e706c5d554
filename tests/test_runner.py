"""`nnlab train` end to end: the command, the run folder, TensorBoard, and the clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import FAST, event_tags, read_metrics, run_fails, run_train, write_mnist_folder

NO_TORCH_CHECK = (
    "import sys; from nnlab.cli import main\n"
    "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "print('HEAVY', 'torch' in sys.modules or 'pytorch_lightning' in sys.modules)\n"
)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHECK, *args], capture_output=True, text=True, timeout=120
    )


def test_help_and_cfg_job_do_not_import_torch():
    top = _cli("--help")
    assert "train" in top.stdout and "HEAVY False" in top.stdout
    train_help = _cli("train", "--help")
    assert "HEAVY False" in train_help.stdout
    for group in (
        "model:",
        "dataset:",
        "accelerator:",
        "logger:",
        "callbacks:",
        "debug:",
        "experiment:",
    ):
        assert group in train_help.stdout, group
    assert "fashion_mnist" in train_help.stdout and "synthetic" in train_help.stdout
    job = _cli("train", "--cfg", "job", "model.latent_dim=7")
    assert "latent_dim: 7" in job.stdout and "HEAVY False" in job.stdout


def test_unknown_command():
    out = _cli("trian")
    assert "unknown command 'trian'" in out.stderr and "HEAVY False" in out.stdout


def test_fast_run_on_synthetic_writes_the_whole_run_folder(tmp_path):
    run = run_train(tmp_path, *FAST)
    metrics = read_metrics(run)
    assert (
        metrics["status"] == "finished"
        and metrics["model"] == "ae"
        and metrics["dataset"] == "synthetic"
    )
    assert 0 < metrics["metrics"]["test/mse"] < 0.5 and "test/loss" in metrics["metrics"]
    assert (run / ".hydra" / "config.yaml").is_file() and (
        run / ".hydra" / "overrides.yaml"
    ).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    log = (run / "train.log").read_text()
    # quiet: nnlab's lines (the model, each epoch, the summary), not Lightning's banner or adverts
    assert "GPU available" not in log and "litlogger" not in log
    assert "ae: " in log and "parameters" in log and "epoch 1/1  train/loss" in log
    assert "test/mse" in log and "baseline test/pca_mse" in log and "nnlab sample" in log
    acc = event_tags(run)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "test/loss", "test/mse", "lr/Adam"} <= scalars
    assert "vis/reconstructions" in acc.Tags()["images"]
    image = acc.Images("vis/reconstructions")[-1]
    assert image.height > 28 and image.width > 28  # a grid, inputs above reconstructions
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_fast_run_on_generated_idx_files(tmp_path):
    data = write_mnist_folder(tmp_path / "mnist-files", n_train=300, n_test=80)
    run = run_train(
        tmp_path,
        "dataset=mnist",
        f"dataset.data_dir={data}",
        "dataset.download=false",
        "debug=fast",
        "accelerator=cpu",
        "dataset.batch_size=32",
    )
    metrics = read_metrics(run)
    assert metrics["status"] == "finished" and metrics["dataset"] == "mnist"
    assert {"train/loss", "val/loss", "test/mse"} <= set(event_tags(run).Tags()["scalars"])


def test_overfit_learns(tmp_path):
    """debug=overfit: the loss on two batches falls well below where it started."""
    run = run_train(
        tmp_path, "dataset=synthetic", "debug=overfit", "trainer.max_epochs=30", "accelerator=cpu"
    )
    losses = [e.value for e in event_tags(run).Scalars("train/loss")]
    assert losses[-1] < 0.5 * losses[0]


def test_default_run_folders_are_readable_and_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from nnlab.train import main

    for _ in range(2):
        monkeypatch.setattr(
            sys,
            "argv",
            ["nnlab train", *FAST, "logger=none", "callbacks.progress_bar.refresh_rate=0"],
        )
        main()
    runs = sorted((tmp_path / "outputs" / "ae" / "synthetic").iterdir())
    assert len(runs) == 2
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", r.name) for r in runs)
    assert all(json.loads((r / "metrics.json").read_text())["status"] == "finished" for r in runs)


# -- errors: exit code, one clear paragraph, no traceback -------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.latent_dim=0", "model.latent_dim=0 is not valid: it must be a positive integer"),
        ("model.latent_dim=abc", "model.latent_dim='abc' is not valid"),
        ("dataset.batch_size=-5", "dataset.batch_size=-5 is not valid"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction=1.5 is not valid"),
        ("model.optimizer.lr=-0.1", "model.optimizer.lr=-0.1 is not valid"),
        (
            "+trainer.profiler=bogus",
            "trainer.profiler='bogus' is not valid: it must be null or one of simple",
        ),
    ],
)
def test_bad_values_are_clear_errors(capsys, tmp_path, override, needle):
    err, _ = run_fails(tmp_path, capsys, *FAST, override)
    assert needle in err and err.startswith("nnlab: config error:")
    assert not (tmp_path / "run").exists()  # a config mistake leaves no run folder


def test_missing_dataset_is_a_clear_error(capsys, tmp_path):
    err, _ = run_fails(
        tmp_path,
        capsys,
        "dataset=mnist",
        f"dataset.data_dir={tmp_path / 'none'}",
        "dataset.download=false",
    )
    assert "Dataset 'mnist' not found" in err and "torchvision's download" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("override", ["trainer.accelerator=gpu", "accelerator=gpu"])
def test_gpu_without_gpu_is_a_clear_error(capsys, tmp_path, override):
    err, _ = run_fails(tmp_path, capsys, "dataset=synthetic", override)
    assert "asks for a GPU" in err and "accelerator=cpu" in err


def test_cli_errors_exit_nonzero_without_traceback(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnlab.cli",
            "train",
            "model.latent_dim=0",
            f"hydra.run.dir={tmp_path}/r",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2 and "Traceback" not in bad.stderr and "model.latent_dim=0" in bad.stderr
    )
    unknown = subprocess.run(
        [sys.executable, "-m", "nnlab.cli", "train", "model.latnt_dim=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # an unknown key: nnlab's paragraph with the closest key (tests/test_ux.py has more)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "Did you mean model.latent_dim?" in " ".join(unknown.stderr.split())


def test_eval_scalars_are_synchronised_across_ranks(monkeypatch):
    """Validation/test epoch scalars ask Lightning for sync_dist (a no-op on one device); training
    ones and Metrics (they synchronise themselves) do not; self.log is Lightning's own."""
    import pytorch_lightning as pl
    from torchmetrics import MeanMetric

    from nnlab.models.autoencoders import AE

    calls = []
    monkeypatch.setattr(
        pl.LightningModule, "log", lambda self, name, value, *a, **kw: calls.append((name, kw))
    )
    model = AE("ae", input_shape=(1, 28, 28))
    assert type(model).log is pl.LightningModule.log
    model.log_terms("val", {"x": 1.0, "m": MeanMetric()})
    model.log_terms("test", {"x": 1.0})
    model.log_terms("train", {"z": 1.0})
    assert [kw["sync_dist"] for _, kw in calls] == [True, False, True, False]
    assert [kw["on_epoch"] for _, kw in calls] == [True, True, True, False]


def test_idle_callback_hooks_are_skipped_and_the_others_still_run(tmp_path):
    """nnlab.lean: Lightning skips a callback's per-batch hooks that are Callback's empty method
    (set to None on the instance) and still calls the ones the callback overrides; the quiet
    profiler profiles nothing, at no cost."""
    import pytorch_lightning as pl
    from torch import nn

    from nnlab.lean import QuietProfiler, skip_idle_hooks

    class Counter(pl.Callback):
        def __init__(self):
            self.calls = {"on_train_batch_end": 0, "on_before_backward": 0}

        def on_train_batch_end(self, *args):
            self.calls["on_train_batch_end"] += 1

        def on_before_backward(self, *args):
            self.calls["on_before_backward"] += 1

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    counter = Counter()
    counter.on_after_backward = counter.calls.setdefault  # an instance attribute is left alone
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
        profiler=QuietProfiler(),
        default_root_dir=tmp_path,
    )
    skip_idle_hooks(trainer.callbacks)
    assert counter.on_train_batch_start is None and counter.on_before_zero_grad is None
    assert callable(counter.on_train_batch_end) and callable(counter.on_before_backward)
    assert counter.on_after_backward == counter.calls.setdefault
    assert counter.on_fit_start is not None  # only the per-batch hooks are touched
    counter.on_after_backward = None
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(12, 4)), batch_size=4
    )
    trainer.fit(Tiny(), train_dataloaders=data)
    assert counter.calls == {"on_train_batch_end": 3, "on_before_backward": 3}
    with trainer.profiler.profile("a") as first, trainer.profiler.profile("b") as second:
        assert first is None and second is None


def test_a_configured_profiler_is_used(tmp_path):
    """debug=profile (trainer.profiler=simple) replaces the quiet default: its report is in
    train.log."""
    run = run_train(tmp_path, *FAST, "debug=profile")
    assert "FIT Profiler Report" in (run / "train.log").read_text()


def test_compiled_run_trains_and_keeps_the_checkpoint_keys(tmp_path):
    """model.compile=true compiles each net in place (torch.compile through nn.Module.compile): the
    run trains, and
    its checkpoint has the keys of a plain run's, so either loads into the other."""
    plain = run_train(tmp_path, *FAST, "test_after_fit=false", name="plain")
    compiled = run_train(
        tmp_path, *FAST, "test_after_fit=false", "model.compile=true", name="compiled"
    )
    assert read_metrics(compiled)["status"] == "finished"
    keys = [
        set(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
        for run in (plain, compiled)
    ]
    assert keys[0] == keys[1] and keys[0]
