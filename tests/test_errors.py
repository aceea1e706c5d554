"""Bad input: a clear paragraph, a non-zero exit code, no traceback, and a failed run says why."""

from __future__ import annotations

import json
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
    """run_fails with the stderr whitespace removed: the paragraph is wrapped at spaces and
    hyphens."""
    err, record = run_fails(tmp_path, capsys, *overrides, **kwargs)
    return _flat(err), record


def _train_fails(capsys, *argv) -> str:
    """`nnlab train <argv>` as typed (no run folder added) that must stop; its stderr without
    whitespace."""
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
            "model='vea' is unknown; use one of ae, cae,",
        ),
        (
            "dataset=nosuch",
            "dataset='nosuch' is unknown; use one of airline, cifar10,",
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
    assert record is None and not (tmp_path / "run").exists()  # nothing ran: no run folder


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
    assert record is None and not (tmp_path / "run").exists()


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
    assert record is None and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_gpu(tmp_path, capsys):
    err, record = _fails(
        tmp_path, capsys, "dataset=synthetic", "debug=fast", "trainer.accelerator=gpu"
    )
    assert "deviceerror" in err and "accelerator=cpu" in err
    assert record is None and not (tmp_path / "run").exists()


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
    assert record is None and not (tmp_path / "run").exists()


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
    """The installed `nnlab` entry point, as a user runs it (config errors import no torch:
    fast)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for args, code, needle in (
        (["model.latent_dim=abc"], 2, "model.latent_dim='abc' is not valid"),
        (["model=nosuch"], 2, "model='nosuch' is unknown; use one of ae,"),
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


# -- issue 16, part 5: paragraphs where there were tracebacks -------------------------------------
def test_an_unreadable_data_file_is_not_called_corrupt(tmp_path, capsys, monkeypatch):
    import builtins

    from nnlab.data import readers

    folder = write_mnist_folder(tmp_path / "mnist", n_train=60, n_test=20)
    real_open = builtins.open

    def deny(path, *args, **kwargs):  # root reads everything: deny the way chmod 000 would
        if str(path).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(readers, "open", deny, raising=False)
    err, record = _fails(
        tmp_path,
        capsys,
        "dataset=mnist",
        f"dataset.data_dir={folder}",
        "dataset.download=false",
        "debug=fast",
        "accelerator=cpu",
    )
    assert "permissiondenied" in err and "delete" not in err and record is None


@pytest.mark.parametrize("sweep", [False, True])
def test_an_output_folder_in_proc_is_a_paragraph_even_for_root(tmp_path, capsys, sweep):
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    err = _train_fails(capsys, *FAST, *(["-m"] if sweep else []), f"{key}=/proc/nnlab/x")
    assert "Cannotcreatethe" in err and "/proc/nnlab/x" in err


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1.5"])
def test_seed_outside_numpys_range(tmp_path, capsys, seed):
    err, record = _fails(tmp_path, capsys, *FAST, f"seed={seed}")
    assert "seed=" in err and "[0,2^32)" in err and record is None


@pytest.mark.parametrize(
    "override, needle",
    [
        ("dataset.n_train=0", "dataset.n_train=0isnotvalid"),
        ("trainer.limit_train_batches=0", "0wouldtrainnothing"),
        ("trainer.precision=16-mixed", "needsaCUDAGPU"),
        ("model.net=resnet", "model.net='resnet'isunknown"),  # raised inside the constructor
    ],
)
def test_more_config_mistakes_are_paragraphs(tmp_path, capsys, override, needle):
    err, record = _fails(tmp_path, capsys, *FAST, override)
    assert needle in err and "Errorincalltotarget" not in err
    assert record is None and not (tmp_path / "run").exists()


def test_an_empty_validation_split_fails_the_run(tmp_path, capsys):
    err, record = _fails(tmp_path, capsys, *FAST, "dataset.n_train=4", "dataset.val_fraction=0.1")
    assert "validationsplit" in err and "isempty" in err and record is None  # nothing trained


def test_max_steps_is_a_trainer_key(tmp_path):
    from conftest import read_metrics

    run = run_train(tmp_path, *FAST, "trainer.max_steps=2", "test_after_fit=false")
    assert read_metrics(run)["global_step"] == 2


def test_a_full_disk_is_a_paragraph_and_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    import errno

    import pytorch_lightning as pl

    def full(self, path, weights_only=False, storage_options=None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")  # what a full disk leaves: a file with nothing in it
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", full)
    err, record = _fails(tmp_path, capsys, *FAST)
    assert "storageerror" in err and "diskisfull" in err and "resume=" in err
    assert record["status"] == "failed" and "No space left" in record["error"]
    assert not list((tmp_path / "run").rglob("*.tmp*"))


def test_eval_of_a_read_only_run_folder_prints_and_says_so(tmp_path, capsys, monkeypatch):
    import errno

    from nnlab import run_record
    from nnlab.evaluate import main as eval_main
    from nnlab.run_folder import RunLock

    run = run_train(tmp_path, *FAST, "threads=1", name="ro")
    before = (run / "metrics.json").read_text()
    real_replace = os.replace

    def read_only(src, dst, *a, **kw):
        if str(dst).startswith(str(run)):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(run_record.os, "replace", read_only)
    monkeypatch.setattr(
        RunLock,
        "acquire",
        lambda self: (_ for _ in ()).throw(
            run_record.StorageError("Cannot lock: Read-only file system")
        ),
    )
    assert eval_main([str(run)]) == 0
    out, err = capsys.readouterr()
    assert "test/mse" in out and "were not written" in err and "Traceback" not in err
    assert (run / "metrics.json").read_text() == before


def test_sample_options_are_checked(tmp_path, capsys):
    from nnlab.sample import main as sample_main

    run = run_train(tmp_path, *FAST, "threads=1", name="s")
    (tmp_path / "folder").mkdir()
    for args, needle in (
        ([f"out={tmp_path / 'folder'}"], "isafolder"),
        ([f"out={tmp_path / 'grid.txt'}"], "noimagesuffix"),
        (["n=1000000000"], "<=1024"),
        (["label=10"], "label=10isoutofrange"),
        (["label=-1"], "label='-1'isnotvalid"),
        (["seed=-3"], "seed='-3'isnotvalid"),
    ):
        with pytest.raises(SystemExit) as exc:
            sample_main([str(run), *args])
        err = _flat(capsys.readouterr().err)
        assert exc.value.code == 2 and needle in err and "Traceback" not in err, args


def test_a_damaged_run_folder_is_a_paragraph(tmp_path, capsys):
    from nnlab.evaluate import main as eval_main

    run = run_train(tmp_path, *FAST, "threads=1", name="d")
    (run / ".hydra" / "config.yaml").write_text("model: [unclosed\n\x00")
    assert eval_main([str(run)]) == 0  # .hydra/config.yaml is not what rebuilds the run
    capsys.readouterr()
    (run / ".hydra" / "overrides.yaml").write_text("- model: [unclosed\n")
    with pytest.raises(SystemExit) as exc:
        eval_main([str(run)])
    err = _flat(capsys.readouterr().err)
    assert exc.value.code == 2 and "overrides.yaml" in err and "Traceback" not in err


def test_a_second_ctrl_c_while_exiting_ends_the_process_quietly(tmp_path):
    import signal

    from omegaconf import OmegaConf

    from nnlab.train import Interrupted, RunGuard, _exit_at_once

    cfg = OmegaConf.create({"model": {"name": "ae"}, "dataset": {"name": "synthetic"}})
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as stop:
            with RunGuard(tmp_path / "run", cfg):
                raise KeyboardInterrupt
        assert stop.value.code == 130 and signal.getsignal(signal.SIGINT) is _exit_at_once
    finally:
        signal.signal(signal.SIGINT, previous)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "interrupted"
