"""Bad input: a clear paragraph, a non-zero exit code, no traceback, and a failed run says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_fails, run_train, write_mnist_folder

ROOT = Path(__file__).resolve().parents[1]


def _flat(text: str) -> str:
    return "".join(text.split())


def _fails(tmp_path, capsys, *overrides, **kwargs):
    """run_fails with the stderr whitespace removed: the paragraph is wrapped at spaces and hyphens."""
    err, record = run_fails(tmp_path, capsys, *overrides, **kwargs)
    return _flat(err), record


def _train_fails(capsys, *argv) -> str:
    """`nnlab train <argv>` as typed (no run folder added) that must stop; its stderr without whitespace."""
    from nnlab.train import main

    saved, sys.argv = sys.argv, ["nnlab train", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = saved
    assert exc.value.code == 2
    return _flat(capsys.readouterr().err)


@pytest.mark.parametrize(
    "override, needle",
    [
        (
            "model=vea",
            "model=vea is not an option of the config group 'model'. Did you mean model=vae? The options are: ae, cae,",
        ),
        (
            "dataset=nosuch",
            "dataset=nosuch is not an option of the config group 'dataset'. The options are: airline, cifar10,",
        ),
        ("accelerator=gpux", "Did you mean accelerator=gpu?"),
    ],
)
def test_unknown_group_option(tmp_path, capsys, override, needle):
    err, record = _fails(tmp_path, capsys, *FAST, override)
    assert _flat(needle) in err and record is None  # refused before anything ran


def test_unknown_option_in_a_sweep_and_null_group(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_train(tmp_path, "-m", "model=ae,vea")
    assert exc.value.code == 2 and _flat("Did you mean model=vae?") in _flat(
        capsys.readouterr().err
    )
    err, _ = _fails(tmp_path, capsys, "experiment=null")
    assert _flat("write ~experiment") in err


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.latent_dim=abc", "model.latent_dim"),  # a wrong type
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.optimizer.lr=-0.1", "model.optimizer.lr"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("dataset.batch_size=-4", "dataset.batch_size"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction"),
        ("dataset.val_fraction=0", "dataset.val_fraction"),
        ("model=cgan model.projection=maybe", "model.projection"),
        ("model=rbm model.l1_weight_decay=-0.1", "model.l1_weight_decay"),
        ("callbacks.checkpoint.every_n_steps=0", "callbacks.checkpoint.every_n_steps"),
    ],
)
def test_bad_values_fail_the_run_with_the_reason(tmp_path, capsys, override, key):
    err, record = _fails(
        tmp_path, capsys, *FAST, *override.split()
    )  # "model=X key=value": two overrides
    assert err.startswith("nnlab:configerror:") and key in err and "Example:" in err
    assert record["status"] == "failed" and key in record["error"]


def test_missing_data_folder(tmp_path, capsys):
    err, record = _fails(
        tmp_path,
        capsys,
        "dataset=mnist",
        f"dataset.data_dir={tmp_path / 'nowhere'}",
        "dataset.download=false",
        "debug=fast",
        "accelerator=cpu",
    )
    assert "dataerror" in err and "notfound" in err and str(tmp_path / "nowhere") in err
    assert record["status"] == "failed" and "not found" in record["error"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_idx_files(tmp_path, capsys, damage):
    folder = write_mnist_folder(tmp_path / "mnist", n_train=60, n_test=20, compress=False)
    victim = folder / "train-images-idx3-ubyte"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100] if damage == "truncate" else b"\x13\x37" + data[2:])
    err, record = _fails(
        tmp_path,
        capsys,
        "dataset=mnist",
        f"dataset.data_dir={folder}",
        "dataset.download=false",
        "debug=fast",
        "accelerator=cpu",
    )
    assert "dataerror" in err and "train-images-idx3-ubyte" in err
    assert ("truncated" in err) if damage == "truncate" else ("notanIDXfile" in err)
    assert record["status"] == "failed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_gpu(tmp_path, capsys):
    err, record = _fails(
        tmp_path, capsys, "dataset=synthetic", "debug=fast", "trainer.accelerator=gpu"
    )
    assert "deviceerror" in err and "accelerator=cpu" in err
    assert record["status"] == "failed"


def _ae_checkpoint(path: Path, **kw) -> Path:
    from nnlab.models.autoencoders import AE

    model = AE(name="ae", **kw)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("text", "not a PyTorch checkpoint"),
        ("truncated", "truncated"),
        ("other_config", "does not fit"),
        ("other_model", "belongs to another model"),
    ],
)
def test_bad_checkpoints_fail_the_run(tmp_path, capsys, kind, needle):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "truncated":
        data = _ae_checkpoint(path).read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "other_config":
        _ae_checkpoint(path, latent_dim=7)
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"name": "gan"}}, path)
    err, record = _fails(tmp_path, capsys, *FAST, f"ckpt_path={path}")
    assert "checkpointerror" in err and _flat(needle) in err
    assert record["status"] == "failed" and needle in record["error"]


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    for folder, needle in (
        (tmp_path / "plain", "not an nnlab run folder"),
        (tmp_path / "missing", "does not exist"),
    ):
        err = _train_fails(capsys, f"resume={folder}")
        assert _flat(needle) in err and "resume=" in err
    run = tmp_path / "run"  # a run folder without checkpoints
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert _flat("has no checkpoints/last.ckpt") in _train_fails(capsys, f"resume={run}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert _flat("model=vae cannot change") in _train_fails(
        capsys, f"resume={run}", "model=vae"
    )  # the model cannot change


def test_output_folder_that_is_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file where a folder should be")
    with pytest.raises(SystemExit) as exc:
        run_train(blocker, *FAST, name="run")  # hydra.run.dir=<file>/run
    assert exc.value.code == 2
    err = _flat(capsys.readouterr().err)
    assert "Cannotcreatetherunfolder" in err and "isafile" in err


def test_eval_and_sample_of_bad_targets(tmp_path, capsys):
    from nnlab.evaluate import main as eval_main
    from nnlab.sample import main as sample_main

    for argv, needle in (
        ([str(tmp_path)], "not an nnlab run folder"),
        ([str(tmp_path / "nope.ckpt")], "does not exist"),
        ([str(tmp_path), "bogus=1"], "Unknown option 'bogus'"),
    ):
        for command in (eval_main, sample_main):
            with pytest.raises(SystemExit) as exc:
                command(argv)
            assert exc.value.code == 2 and _flat(needle) in _flat(capsys.readouterr().err)


def test_the_real_command_prints_one_paragraph_without_traceback(tmp_path):
    """The installed `nnlab` entry point, as a user runs it (config errors import no torch: fast)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for args, code, needle in (
        (["model.latent_dim=abc"], 2, "model.latent_dim='abc' is not valid"),
        (["model=nosuch"], 2, "model=nosuch is not an option of the config group 'model'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "nnlab.cli", "train", *args, f"hydra.run.dir={tmp_path / 'r'}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (
            proc.returncode == code
            and _flat(needle) in _flat(proc.stderr)
            and "Traceback" not in proc.stderr
        )
