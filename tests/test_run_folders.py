"""One process per run folder (issue 16, part 2) and resume that keeps every record (part 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, read_metrics, run_train

# holds a run folder's lock the way another nnlab process would, until killed
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "h", "command": "nnlab train",
                         "since": "2026-01-01T00:00:00"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = run_train(tmp_path_factory.mktemp("runs"), *FAST, "threads=1")
    record = read_metrics(run)
    record["eval"] = {"synthetic": {"metrics": {"test/mse": 0.5}}}  # as nnlab eval leaves it
    (run / "metrics.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns(".nnlab.lock"))
    return copy


def _train(*argv: str, code: int | None = None, capsys=None) -> str:
    from nnlab.train import main

    saved, sys.argv = sys.argv, ["nnlab train", *argv, "callbacks.progress_bar.refresh_rate=0"]
    try:
        if code is None:
            main()
            return ""
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == code
    finally:
        sys.argv = saved
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


# -- part 2: one process per run folder ------------------------------------------------------------
def test_a_second_run_into_the_same_folder_is_refused(finished_run, capsys):
    before = (finished_run / "metrics.json").read_text()
    err = _train(*FAST, "seed=2", f"hydra.run.dir={finished_run}", code=2, capsys=capsys)
    assert "already holds files" in err and f"resume={finished_run}" in err
    assert (finished_run / "metrics.json").read_text() == before
    assert len(list(finished_run.glob("events.out.tfevents.*"))) == 3  # no events mixed in


def test_a_folder_in_use_is_refused_with_the_holders_pid(run_copy, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_copy / ".nnlab.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (run_copy / "metrics.json").read_text()
        err = _train(f"resume={run_copy}", code=2, capsys=capsys)
        assert f"in use by another nnlab process (pid {holder.pid}" in err
        from nnlab.evaluate import main as eval_main

        with pytest.raises(SystemExit) as exc:
            eval_main([str(run_copy)])
        assert exc.value.code == 2 and f"pid {holder.pid}" in capsys.readouterr().err
        assert (run_copy / "metrics.json").read_text() == before
    finally:
        holder.kill()
        holder.wait()


def test_checkpoint_temporaries_are_per_process(tmp_path):
    from types import SimpleNamespace

    from nnlab.checkpoints import ResumableCheckpoint

    seen = []
    trainer = SimpleNamespace(
        save_checkpoint=lambda path, weights_only=False: (
            seen.append(path),
            Path(path).write_bytes(b"x"),
        ),
        is_global_zero=True,
        global_step=1,
        loggers=[],
        strategy=SimpleNamespace(barrier=lambda *a: None),
    )
    ResumableCheckpoint(dirpath=tmp_path).write_file(trainer, str(tmp_path / "last.ckpt"))
    assert seen == [f"{tmp_path / 'last.ckpt'}.tmp{os.getpid()}"]


# -- part 3: resume keeps every record -------------------------------------------------------------
def test_a_failed_resume_leaves_the_record_as_it_was(run_copy, capsys):
    before = (run_copy / "metrics.json").read_text()
    err = _train(f"resume={run_copy}", "trainer.max_epochs=0", code=2, capsys=capsys)
    assert "trainer.max_epochs=0 is not valid" in err  # a bad config
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    err = _train(f"resume={run_copy}", code=2, capsys=capsys)
    assert "truncated" in err  # a corrupt checkpoint
    assert (run_copy / "metrics.json").read_text() == before


def test_resume_keeps_provenance_evaluations_and_history(run_copy, tmp_path):
    overrides = (run_copy / ".hydra" / "overrides.yaml").read_text()
    moved = tmp_path / "moved"
    run_copy.rename(moved)  # absolute paths in the checkpoint now point nowhere
    _train(f"resume={moved}", "trainer.max_epochs=2", "trainer.limit_train_batches=4")
    record = read_metrics(moved)
    assert record["status"] == "finished" and record["epochs"] == 2
    assert record["eval"] == {"synthetic": {"metrics": {"test/mse": 0.5}}}
    assert record["overrides"] and (moved / ".hydra" / "overrides.yaml").read_text() == overrides
    [entry] = record["resumes"]
    assert entry["from_step"] == 3 and entry["status"] == "finished"
    assert entry["overrides"] == ["trainer.max_epochs=2", "trainer.limit_train_batches=4"]
    assert Path(record["best_checkpoint"]).parent == moved / "checkpoints"
    state = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)
    [ckpt_state] = [v for k, v in state["callbacks"].items() if "ResumableCheckpoint" in k]
    assert ckpt_state["best_model_score"] is not None  # best tracking went on
    assert "/" not in ckpt_state["best_model_path"]  # stored relative to the run folder


def test_resume_refuses_to_change_the_optimiser(run_copy, capsys):
    for override in ("model.optimizer.lr=50", "seed=3"):
        err = _train(f"resume={run_copy}", override, code=2, capsys=capsys)
        assert override in err and "last.ckpt" in err and "start a new run" in err


def test_sigterm_exits_143_and_marks_the_run_interrupted(tmp_path):
    run = tmp_path / "run"
    args = (*FAST, "trainer.max_epochs=1000", "trainer.limit_train_batches=50", "threads=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlab.cli", "train", *args, f"hydra.run.dir={run}"],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.time() + 240
        while not (run / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.time() < end
            time.sleep(0.05)
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err[-2000:]
    record = read_metrics(run)
    assert record["status"] == "interrupted" and "resume=" in record["resume"]
    assert "Traceback" not in err
