"""Sweeps end to end through the real entry point: readable job folders with HParams (submitit's
local executor: the SLURM path, in its own processes), a failing job that does not stop the sweep,
DDP on two CPU processes, and the presets. Few and tiny: synthetic data, debug=fast, threads=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, read_metrics, run_fails, run_train

TINY = (*FAST, "threads=1", "callbacks.progress_bar.refresh_rate=0")


def nnlab(*args: str, cwd: Path) -> subprocess.Popen:
    """`nnlab ARGS` in its own process, finished: .returncode, .stdout, .stderr, .pid."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlab.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout, proc.stderr = proc.communicate(timeout=900)
    return proc


def runs_json(folder: Path) -> dict[str, dict]:
    from nnlab.runs import find_runs, read_run

    return {r["name"]: r for r in (read_run(d, folder) for d in find_runs(folder))}


def hparams_of_events(run_dir: Path) -> tuple[dict, list[str]]:
    """The HParams session in a run's event files: its hyper-parameters, and the scalar tags
    TensorBoard offers as its metrics. No "experiment" summary: TensorBoard builds the HParams
    table from all the runs under its logdir (one run's experiment would decide the columns)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in content
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {
        k: v.number_value if v.HasField("number_value") else v.string_value
        for k, v in start.session_start_info.hparams.items()
    }
    return hparams, acc.Tags()["scalars"]


def test_submitit_local_sweep_lands_two_runs_with_hparams(tmp_path):
    """The SLURM launcher's path, run by submitit's local executor: two jobs, each in a folder named
    by what the sweep varies (latent_dim=4: the constant keys left out), each with its HParams
    session (hyper-parameters) and final metrics in its events.
    """
    sweep = tmp_path / "sweep"
    proc = nnlab(
        "train",
        "-m",
        "model.latent_dim=4,8",
        *TINY,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep finished: 2 jobs" in proc.stdout
    names = {"latent_dim=4", "latent_dim=8"}
    runs = runs_json(sweep)
    assert set(runs) == names  # .submitit/ (the executor's own files) is not a run
    for latent_dim in (4, 8):
        job = sweep / f"latent_dim={latent_dim}"
        assert read_metrics(job)["status"] == "finished"
        hparams, metric_tags = hparams_of_events(job)
        assert hparams["model.latent_dim"] == latent_dim and hparams["model"] == "ae"
        assert hparams["dataset.name"] == "synthetic"
        assert {"test/mse", "val/loss"} <= set(metric_tags)

    listed = json.loads(
        nnlab("runs", str(sweep), "--json", "--sort", "model.latent_dim", cwd=tmp_path).stdout
    )
    assert [r["differs"] for r in listed] == [{"model.latent_dim": "4"}, {"model.latent_dim": "8"}]
    assert all(r["status"] == "finished" and r["metrics"]["test/mse"] > 0 for r in listed)


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, capsys):
    """Job 0 fails (a config error), job 1 still trains; the sweep ends with the summary and exit 1,
    and `nnlab runs` marks the failed job. (In this process: the real entry point, with -m.)"""
    from nnlab import cli

    sweep = tmp_path / "sweep"
    argv, main_spec = sys.argv, sys.modules["__main__"].__spec__  # cli.main sets both
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "-m", "model.latent_dim=-1,4", *TINY, f"hydra.sweep.dir={sweep}"])
    finally:
        sys.argv, sys.modules["__main__"].__spec__ = argv, main_spec
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "1 of 2 jobs not finished" in err
    assert "latent_dim=-1: failed: model.latent_dim=-1 is not valid" in err
    bad, good = sweep / "latent_dim=-1", sweep / "latent_dim=4"
    assert read_metrics(bad)["status"] == "failed"
    assert (
        read_metrics(good)["status"] == "finished" and read_metrics(good)["metrics"]["test/mse"] > 0
    )

    table = nnlab("runs", str(sweep), cwd=tmp_path)  # the command, as a user types it
    assert table.returncode == 0 and "failed" in table.stdout and "finished" in table.stdout
    listed = {
        r["differs"]["model.latent_dim"]: r
        for r in json.loads(nnlab("runs", str(sweep), "--json", cwd=tmp_path).stdout)
    }
    assert listed["-1"]["status"] == "failed" and "positive integer" in listed["-1"]["error"]
    assert listed["4"]["status"] == "finished"


def test_missing_data_stops_the_whole_sweep_at_once(tmp_path, capsys):
    """Missing data would fail every job alike (an Optuna search then had no trial to report and
    crashed): the first job ends the sweep with nnlab's paragraph and exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_train(
            tmp_path,
            "-m",
            "model.latent_dim=4,8",
            "dataset=mnist",
            f"dataset.data_dir={tmp_path / 'none'}",
            "dataset.download=false",
            "debug=fast",
            "accelerator=cpu",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nnlab: data error: Dataset 'mnist' not found" in err and "Traceback" not in err
    assert (
        len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 1
    )  # the second job never started


def test_a_single_run_still_fails_with_one_paragraph(tmp_path, capsys):
    """Outside a sweep a user error still ends the command: one paragraph, exit code 2, no
    traceback."""
    err, record = run_fails(tmp_path, capsys, "model.latent_dim=-1", *FAST)
    assert "nnlab: config error: model.latent_dim=-1 is not valid" in err
    assert record is None and not (tmp_path / "run").exists()  # nothing ran: no run folder


def test_ddp_cpu_trains_on_two_processes_and_rank_zero_writes(tmp_path):
    """accelerator=ddp_cpu: Lightning re-launches `python -m nnlab.train` for rank 1 (through the
    Hydra entry point); only rank 0 (this command's process) writes metrics.json and the events."""
    run = tmp_path / "ddp"
    proc = nnlab(
        "train",
        "accelerator=ddp_cpu",
        "dataset=synthetic",
        "debug=fast",
        "threads=1",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_metrics(run)
    assert record["status"] == "finished" and record["pid"] == proc.pid
    assert record["global_step"] == 3 and record["metrics"]["test/mse"] > 0
    assert (run / "train_ddp_process_1.log").exists()  # rank 1 ran, with its own log
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}
    assert writers == {str(record["pid"])}  # every event file written by rank 0's process


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("nnlab.configs", version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=True)


def test_presets_compose():
    """The Optuna preset follows the model's monitor_mode; the SLURM template and DDP presets
    compose."""
    cfg = compose("hparams_search=ae_optuna")
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.hydra.mode.name == "MULTIRUN"
    assert "model.latent_dim" in cfg.hydra.sweeper.params
    cfg = compose("hparams_search=ae_optuna", "model.monitor_mode=max")
    assert cfg.hydra.sweeper.direction == "maximize"
    cfg = compose(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"
    )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.gpus_per_node) == ("gpu", 4)
    assert compose("accelerator=ddp").trainer.strategy == "ddp"
    ddp_cpu = compose("accelerator=ddp_cpu").trainer
    assert (ddp_cpu.accelerator, ddp_cpu.devices, ddp_cpu.strategy) == ("cpu", 2, "ddp")
