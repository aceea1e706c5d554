"""Checkpoints: atomic writes, safe loading, exact resume after kill -9, Ctrl-C, nnlab eval /
sample."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, read_metrics, run_train

from nnlab.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
# a run long enough to be killed mid-epoch: 2 epochs of 57 steps, last.ckpt every 5 steps
RESUMABLE = (
    "dataset=synthetic",
    "accelerator=cpu",
    "threads=1",
    "trainer.max_epochs=2",
    "dataset.n_train=2048",
    "dataset.batch_size=32",
    "model.hidden_dims=[512,512]",
    "callbacks.checkpoint.every_n_steps=5",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
    "seed=7",
)


def _nnlab(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "nnlab.cli", *args],
        cwd=kw.get("cwd", ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("ae"), *FAST, "model=ae", "threads=1")


# -- the loader and the RNG state ----------------------------------------------------------------
def test_tensor_batches_resume_mid_epoch_with_the_same_order():
    from nnlab.data.batches import TensorBatches

    images, labels = torch.arange(40).view(40, 1, 1, 1), torch.arange(40)
    epoch = {"e": 3}
    full = TensorBatches(images, labels, 4, shuffle=True, seed=5, epoch_fn=lambda: epoch["e"])
    whole = [y.tolist() for _, y in full]
    it = iter(full)
    seen = [next(it)[1].tolist() for _ in range(4)]
    state = full.state_dict()
    assert state == {"epoch": 3, "position": 4}
    resumed = TensorBatches(images, labels, 4, shuffle=True, seed=5, epoch_fn=lambda: epoch["e"])
    resumed.load_state_dict(state)
    assert seen + [y.tolist() for _, y in resumed] == whole
    assert len([1 for _ in resumed]) == 10  # the next epoch starts from the beginning


def test_rng_state_roundtrip_survives_weights_only(tmp_path):
    import random

    import numpy as np

    from nnlab.checkpoints import _rng_state, _set_rng_state

    torch.save({"rng": _rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expected[0], again[0])
        and np.array_equal(expected[1], again[1])
        and expected[2] == again[2]
    )


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A write that dies before the rename leaves the previous last.ckpt intact."""
    from types import SimpleNamespace

    from nnlab.checkpoints import ResumableCheckpoint

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def save_checkpoint(path, weights_only=False):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-write

    trainer = SimpleNamespace(
        save_checkpoint=save_checkpoint,
        is_global_zero=True,
        global_step=1,
        loggers=[],
        strategy=SimpleNamespace(barrier=lambda *a: None),
    )
    with pytest.raises(KeyboardInterrupt):
        ResumableCheckpoint(dirpath=tmp_path)._save_checkpoint(trainer, str(target))
    assert target.read_bytes() == b"previous"
    assert not list(tmp_path.glob("*.tmp*"))  # the partial file of this process is gone
    trainer.save_checkpoint = lambda path, weights_only=False: Path(path).write_bytes(b"complete")
    ResumableCheckpoint(dirpath=tmp_path)._save_checkpoint(trainer, str(target))
    assert target.read_bytes() == b"complete" and not list(tmp_path.glob("*.tmp*"))


# -- safe loading ---------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, capsys):
    from nnlab.evaluate import main as eval_main
    from nnlab.inference import load_checkpoint

    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"name": "ae"}, "x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_checkpoint(evil)
    with pytest.raises(SystemExit) as exc:
        eval_main([str(evil)])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Refusing to load" in err and "weights_only=True" in err and "Traceback" not in err
    assert not marker.exists()


def test_not_a_checkpoint_truncated_and_another_model(tmp_path, ae_run):
    from nnlab.inference import check_fits, load_checkpoint
    from nnlab.models.autoencoders import AE

    text = tmp_path / "notes.ckpt"
    text.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(
        CheckpointError, match="not a PyTorch checkpoint|truncated or not a checkpoint"
    ):
        load_checkpoint(text)
    good = (ae_run / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    ckpt = load_checkpoint(ae_run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="latent_dim"):
        check_fits(ckpt, AE(name="ae", latent_dim=7), "last.ckpt")
    with pytest.raises(CheckpointError, match="belongs to another model"):
        check_fits({**ckpt, "hyper_parameters": {"name": "vae"}}, AE(name="ae"), "last.ckpt")


# -- eval and sample on a finished run (parametrised: add a family's tiny run here) ----------------
FAMILIES = {"ae": ("model=ae",)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eval_and_sample_on_a_finished_run(family, tmp_path, monkeypatch, capsys, tmp_path_factory):
    from nnlab.evaluate import main as eval_main
    from nnlab.sample import main as sample_main

    run = run_train(tmp_path_factory.mktemp(family), *FAST, *FAMILIES[family], "threads=1")
    monkeypatch.chdir(tmp_path)  # any working directory
    assert eval_main([str(run)]) == 0
    out = capsys.readouterr().out
    record = read_metrics(run)
    test_keys = [k for k in record["metrics"] if k.startswith("test/")]
    assert test_keys and all(k in out for k in test_keys)
    evaluated = record["eval"][record["dataset"]]["metrics"]
    for (
        key
    ) in test_keys:  # the best checkpoint on the same test batches: the run's own test metrics
        assert evaluated[key] == pytest.approx(record["metrics"][key], rel=1e-5)
    assert record["status"] == "finished"

    assert eval_main([str(run / "checkpoints" / "last.ckpt")]) == 0  # a bare .ckpt
    assert sample_main([str(run), "n=6", "out=grid.png"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as img:
        assert img.width > 28 and img.height > 28


def test_sample_without_sample_grid_is_a_clear_error(ae_run, monkeypatch, capsys, tmp_path):
    from nnlab.models.autoencoders import AutoencoderBase
    from nnlab.sample import main as sample_main

    monkeypatch.delattr(AutoencoderBase, "sample_grid")
    with pytest.raises(SystemExit) as exc:
        sample_main([str(ae_run), f"out={tmp_path / 'x.png'}"])
    assert exc.value.code != 0 and "has no sample_grid" in capsys.readouterr().err


# -- kill -9 mid-epoch, resume, same result --------------------------------------------------------
def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    from nnlab.inference import load_checkpoint
    from nnlab.train import main

    crashed = tmp_path / "crashed"
    proc = _nnlab("train", *RESUMABLE, f"hydra.run.dir={crashed}")
    try:
        _wait_for(crashed / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    step = load_checkpoint(crashed / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step and step % 57 != 0, "the kill should land mid-epoch"
    assert read_metrics(crashed)["status"] == "running"  # kill -9: nobody could write anything

    reference = run_train(tmp_path, *RESUMABLE, name="reference")
    argv = sys.argv
    sys.argv = ["nnlab train", f"resume={crashed}"]
    try:
        main()
    finally:
        sys.argv = argv
    done, ref = read_metrics(crashed), read_metrics(reference)
    assert done["status"] == "finished" and done["global_step"] == ref["global_step"] == 114
    for key in ("test/loss", "val/loss"):
        assert done["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4)
    events = list(crashed.glob("events.out.tfevents.*"))
    assert len(events) >= 2 and all(e.parent == crashed for e in events)  # the same TensorBoard run


def test_ctrl_c_saves_last_marks_interrupted_and_prints_the_resume_command(tmp_path):
    from nnlab.inference import load_checkpoint

    run = tmp_path / "run"
    proc = _nnlab(
        "train",
        *RESUMABLE,
        "trainer.max_epochs=50",
        "callbacks.checkpoint.every_n_steps=1000",
        f"hydra.run.dir={run}",
    )
    try:
        _wait_for(
            run / "checkpoints" / "last.ckpt", proc
        )  # the first epoch is done: training is under way
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    record = read_metrics(run)
    assert record["status"] == "interrupted"
    assert f"nnlab train resume={run}" in err and record["resume"] == f"nnlab train resume={run}"
    assert "Traceback" not in err
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] > 57  # written at the Ctrl-C, not only at the end of epoch 1
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
