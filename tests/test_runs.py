"""`nnlab runs`: the table of runs, read from metrics.json, .hydra/ and (fallback) TensorBoard
events.

The run folders here are written by hand in the formats nnlab train writes, so these tests take
well under a second; tests/test_sweeps.py runs `nnlab runs` on real sweeps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nnlab import runs as nnlab_runs


def make_run(
    folder: Path,
    status: str = "finished",
    overrides=(),
    metrics=None,
    model="ae",
    latent_dim=32,
    pid=None,
    host=None,
    **fields,
) -> Path:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    config = {
        "model": {"name": model, "latent_dim": latent_dim, "optimizer": {"lr": 1e-3}},
        "dataset": {"name": "synthetic"},
        "seed": 42,
    }
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    record = {
        "status": status,
        "model": model,
        "dataset": "synthetic",
        "overrides": list(overrides),
        "started": "2026-01-01T10:00:00",
        "host": host or socket.gethostname(),
        "pid": pid or 1,
        "metrics": metrics or {},
        "wall_time_s": 12.5,
        "epochs": 3,
        **fields,
    }
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "checkpoints").mkdir()
    return folder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def listed(capsys, *args) -> list[dict]:
    assert nnlab_runs.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def runs_dir(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01_10-00-00-000000"
    make_run(
        sweep / "model.latent_dim=8",
        overrides=["model.latent_dim=8", "debug=fast"],
        metrics={"test/mse": 0.02, "test/loss": 0.02, "val/loss": 0.03},
        latent_dim=8,
    )
    make_run(
        sweep / "model.latent_dim=32",
        overrides=["model.latent_dim=32", "debug=fast"],
        metrics={"test/mse": 0.01, "test/loss": 0.01, "val/loss": 0.015},
    )
    make_run(
        sweep / "model.latent_dim=-1",
        status="failed",
        overrides=["model.latent_dim=-1", "debug=fast"],
        latent_dim=-1,
        error="model.latent_dim=-1 is not valid: it must be a positive integer.",
    )
    # killed: still says running, but its process is gone
    make_run(tmp_path / "ae" / "synthetic" / "killed", status="running", pid=dead_pid())
    # alive: this very process
    make_run(tmp_path / "ae" / "synthetic" / "alive", status="running", pid=None)
    alive = tmp_path / "ae" / "synthetic" / "alive" / "metrics.json"
    record = json.loads(alive.read_text())
    record.update(pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    alive.write_text(json.dumps(record))
    make_run(
        tmp_path / "vae" / "synthetic" / "r1",
        model="vae",
        overrides=["model=vae"],
        metrics={"test/elbo": -95.0, "test/loss": 95.0},
    )
    return tmp_path


def test_lists_every_run_with_status_overrides_and_metrics(runs_dir, capsys):
    by_name = {r["name"]: r for r in listed(capsys, str(runs_dir))}
    sweep = "multirun/2026-01-01_10-00-00-000000/"
    assert set(by_name) == {
        sweep + "model.latent_dim=8",
        sweep + "model.latent_dim=32",
        sweep + "model.latent_dim=-1",
        "ae/synthetic/killed",
        "ae/synthetic/alive",
        "vae/synthetic/r1",
    }
    assert by_name[sweep + "model.latent_dim=8"]["status"] == "finished"
    assert by_name[sweep + "model.latent_dim=8"]["metrics"]["test/mse"] == 0.02
    failed = by_name[sweep + "model.latent_dim=-1"]
    assert failed["status"] == "failed" and "positive integer" in failed["error"]
    assert by_name["ae/synthetic/killed"]["status"] == "interrupted"
    assert by_name["ae/synthetic/alive"]["status"] == "running"
    # differing overrides: latent_dim differs (a run without the override shows its config's value);
    # debug=fast is in only some runs, so it differs too; model has its own column
    assert by_name[sweep + "model.latent_dim=8"]["differs"]["model.latent_dim"] == "8"
    assert by_name["vae/synthetic/r1"]["differs"]["model.latent_dim"] == "32"
    assert "model" not in by_name["vae/synthetic/r1"]["differs"]


def test_only_the_overrides_that_differ_within_a_sweep(runs_dir, capsys):
    runs = listed(capsys, str(runs_dir / "multirun"))
    assert [r["differs"] for r in runs] == [{"model.latent_dim": v} for v in ("-1", "32", "8")]


def test_filter_sort_and_csv(runs_dir, capsys):
    runs = listed(
        capsys,
        str(runs_dir),
        "--filter",
        "model=ae",
        "--filter",
        "status=fin*",
        "--sort",
        "test/mse",
    )
    assert [r["metrics"]["test/mse"] for r in runs] == [0.01, 0.02]
    runs = listed(capsys, str(runs_dir / "multirun"), "--sort", "model.latent_dim")  # as numbers
    assert [r["differs"]["model.latent_dim"] for r in runs] == ["-1", "8", "32"]
    runs = listed(capsys, str(runs_dir), "--filter", "model.latent_dim=8")
    assert [r["name"].rsplit("/", 1)[-1] for r in runs] == ["model.latent_dim=8"]
    runs = listed(capsys, str(runs_dir), "--sort", "test/mse", "-r")
    assert [r["metrics"].get("test/mse") for r in runs][:2] == [0.02, 0.01]  # runs without it last

    assert nnlab_runs.main([str(runs_dir), "--csv", "--filter", "status=finished"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split(",")
    assert header[:7] == [
        "name",
        "model",
        "dataset",
        "overrides",
        "status",
        "epochs",
        "wall_time_s",
    ]
    assert "test/mse" in header and "test/elbo" in header and "test/loss" not in header
    assert len(lines) == 4


def test_table_and_errors(runs_dir, capsys):
    assert nnlab_runs.main([str(runs_dir / "multirun")]) == 0
    out, err = capsys.readouterr()
    assert "3 runs under" in out and "finished" in out and "failed" in out and "test/mse" in out
    assert "positive integer" in err  # the failed run's error under the table
    assert nnlab_runs.main([str(runs_dir / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert nnlab_runs.main([str(runs_dir), "--filter", "model"]) == 2


def test_falls_back_to_event_files(tmp_path, capsys):
    """A run that died without metrics.json: metrics, epochs and wall time from its TensorBoard
    events."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run = tmp_path / "ae" / "synthetic" / "old"
    writer = EventFileWriter(str(run))
    for step, (epoch, loss, wall) in enumerate([(0, 0.5, 100.0), (1, 0.25, 130.0)]):
        for tag, value in (("epoch", float(epoch)), ("val/loss", loss)):
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
            )
            writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
    writer.close()
    (run_record,) = listed(capsys, str(tmp_path))
    assert run_record["source"] == "events"
    assert run_record["metrics"] == {"val/loss": 0.25}
    assert run_record["epochs"] == 2 and run_record["wall_time_s"] == 30.0
    assert run_record["status"] == "interrupted"  # no test metrics: it never got to the end


def test_does_not_import_torch(runs_dir):
    code = (
        "import sys, nnlab.cli; nnlab.cli.main(['runs', sys.argv[1]]); "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'tensorflow') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(runs_dir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 runs under" in proc.stdout


# -- any folder: a bad run is listed as unreadable, the others as usual (issue 16, part 4) ---------
def test_malformed_records_are_unreadable_rows_and_the_rest_is_listed(tmp_path, capsys):
    make_run(tmp_path / "good", metrics={"test/mse": 0.02})
    make_run(
        tmp_path / "types",
        status=["finished"],
        metrics={"test/mse": "low", "test/acc": [1]},
        epochs="three",
        wall_time_s={"x": 1},
        pid="1; rm -rf /",
        error=7,
        overrides=[3, "model.latent_dim=8"],
    )
    make_run(tmp_path / "markup", status="failed", error="bad [/] and [link=http://x]click[/link]")
    make_run(tmp_path / "big")
    (tmp_path / "big" / "metrics.json").write_text(json.dumps({"error": "x" * (5 << 20)}))
    make_run(tmp_path / "nested")
    (tmp_path / "nested" / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    make_run(tmp_path / "fifo")
    (tmp_path / "fifo" / "metrics.json").unlink()
    os.mkfifo(tmp_path / "fifo" / "metrics.json")  # reading it would block forever
    start = time.time()
    by_name = {r["name"]: r for r in listed(capsys, str(tmp_path))}
    assert time.time() - start < 20
    assert (
        by_name["good"]["status"] == "finished" and by_name["good"]["metrics"]["test/mse"] == 0.02
    )
    types = by_name["types"]
    assert types["status"] == "unreadable" and types["metrics"] == {}
    assert types["epochs"] is None and types["wall_time_s"] is None and types["error"] is None
    assert types["overrides"] == ["model.latent_dim=8"]
    for name in ("big", "nested", "fifo"):
        assert by_name[name]["status"] == "unreadable" and by_name[name]["error"], name
    assert nnlab_runs.main([str(tmp_path)]) == 0  # the table, and the errors under it
    out, err = capsys.readouterr()
    assert "5 runs" not in out and "6 runs under" in out
    assert "[link=http://x]click[/link]" in " ".join(err.split()).replace(" ", "")
    assert len(err) < 5000


def test_run_data_reaches_the_terminal_without_control_characters(tmp_path, capsys):
    make_run(
        tmp_path / "evil",
        model="ae\x1b[2J\x1b]0;title\x07",
        status="failed",
        error="\x1b[31mred\x1b[0m\rover",
        overrides=["model.latent_dim=\x1b[5m8"],
        metrics={"test/mse\x1b[1m": 0.5},
    )
    assert nnlab_runs.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err and "\r" not in out + err
    assert nnlab_runs.main([str(tmp_path), "--csv"]) == 0
    csv_out = capsys.readouterr().out
    assert "\x1b" not in csv_out and "ae[2J]0;title" in csv_out
