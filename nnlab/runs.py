"""`nnlab runs [DIR ...]`: a table of every run under DIR (default outputs/) to compare them.

    nnlab runs                                   # every run under outputs/
    nnlab runs outputs/multirun/2026-11-23_10-00-00-000000 --sort test/mse
    nnlab runs --filter model=vae --filter status=finished --json

A run is a folder with a metrics.json (written by nnlab train), a .hydra/ folder or TensorBoard
events. Each row: the run's path relative to DIR, model, dataset, the overrides that differ
between the listed runs, status, epochs, wall time and the final test metrics. It reads
metrics.json and .hydra/*.yaml, and the event files (TFRecord framing read here, the records
decoded with TensorBoard's protobuf) for runs that died without a metrics.json. It never
imports torch, so it answers at once.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# the final metrics that say most about each family, shown first when a run has them
# (test/loss, the same number as one of these, is shown only for runs that have none of them)
KEY_METRICS = ("test/mse", "test/bce", "test/elbo", "test/recon", "test/kl", "test/fid", "test/acc")
MAX_METRIC_COLUMNS = 6
# overrides that change nothing in the result: never shown as a difference between runs
NOISE_KEYS = ("threads", "callbacks.progress_bar.refresh_rate", "hydra.", "ckpt_path")
STATUS_STYLE = {"finished": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


# ---------------------------------------------------------------- finding and reading runs


def _is_run(folder: Path, names: set[str]) -> bool:
    return (
        "metrics.json" in names
        or (folder / ".hydra" / "config.yaml").is_file()
        or any(n.startswith("events.out.tfevents.") for n in names)
    )


def find_runs(root: Path) -> Iterator[Path]:
    """Every run folder under root (root itself included); a run's own sub-folders are not searched."""
    for folder, dirs, files in os.walk(root):
        path = Path(folder)
        if _is_run(path, set(files)):
            dirs[:] = []  # checkpoints/, .hydra/, csv/ belong to this run
            yield path
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))


def _yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _process_start(pid: int) -> float | None:
    """When process pid started (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _pid_runs(pid: int, started: float | None) -> bool:
    """Is the process that wrote this record still alive (and not a new process reusing its pid)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    since = _process_start(pid)
    return since is None or started is None or since <= started + 2


def _epoch_of(stamp: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else None
    except ValueError:
        return None


def live_status(record: dict) -> str:
    """The record's status, except that a 'running' run whose process is gone (on this host) was
    interrupted: killed, out of memory, or the machine went down before it could say so."""
    status = record.get("status", "unknown")
    if status == "running" and record.get("host") == socket.gethostname() and record.get("pid"):
        if not _pid_runs(int(record["pid"]), _epoch_of(record.get("started"))):
            return "interrupted"
    return status


def _tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file: uint64 length, uint32 crc, data, uint32 crc (crcs not checked)."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return  # a record cut short by a dying writer
            yield data


def read_events(run_dir: Path) -> dict[str, Any]:
    """Last value of every scalar, the last epoch and the wall time, from the run's event files."""
    from tensorboard.compat.proto import event_pb2  # protobuf only: no torch, no TensorFlow

    scalars: dict[str, tuple[int, float]] = {}
    times: list[float] = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for data in _tfrecords(path):
            event = event_pb2.Event.FromString(data)
            if event.summary.value:
                times.append(event.wall_time)
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    number = value.simple_value
                elif value.HasField("tensor") and value.tensor.float_val:
                    number = value.tensor.float_val[0]
                else:
                    continue
                if value.tag not in scalars or event.step >= scalars[value.tag][0]:
                    scalars[value.tag] = (event.step, float(number))
    metrics = {tag: v for tag, (_, v) in scalars.items() if tag != "epoch"}
    return {
        "metrics": metrics,
        "epochs": int(scalars["epoch"][1]) + 1 if "epoch" in scalars else None,
        "wall_time_s": round(max(times) - min(times), 3) if times else None,
        "status": "finished" if any(t.startswith("test/") for t in metrics) else "interrupted",
    }


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run as a flat dict: what `--json` prints for it."""
    record = {}
    try:
        record = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    config = _yaml(run_dir / ".hydra" / "config.yaml") or {}
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = record.get("overrides") or []
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    run = {
        "name": name,
        "path": str(run_dir.resolve()),
        "model": record.get("model") or _lookup(config, "model.name"),
        "dataset": record.get("dataset") or _lookup(config, "dataset.name"),
        "overrides": [str(o) for o in overrides],
        "status": live_status(record) if record else None,
        "error": record.get("error"),
        "epochs": record.get("epochs"),
        "global_step": record.get("global_step"),
        "wall_time_s": record.get("wall_time_s"),
        "started": record.get("started"),
        "host": record.get("host"),
        "metrics": record.get("metrics") or {},
        "source": "metrics.json" if record else "events",
        "config": config,
    }
    if run["status"] == "running" and run["started"]:
        began = _epoch_of(run["started"])
        if began:
            run["wall_time_s"] = round(time.time() - began, 3)
    if not record:
        run.update({k: v for k, v in read_events(run_dir).items() if v is not None})
    return run


# ---------------------------------------------------------------- comparing runs


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def differing_overrides(runs: list[dict]) -> None:
    """Set run['differs'] to the overrides whose value is not the same in every listed run (a run
    without that override shows its config's value where it has one). One run: all its overrides."""
    parsed = [dict(_split(o) for o in run["overrides"]) for run in runs]
    keys = sorted(
        {
            k
            for p in parsed
            for k in p
            if not k.startswith(NOISE_KEYS) and k not in ("model", "dataset")
        }
    )
    for run in runs:
        run["differs"] = {}
    for key in keys:
        values = []
        for run, own in zip(runs, parsed):
            value = own.get(key)
            if value is None:
                found = _lookup(run["config"], key)
                value = None if found is None or isinstance(found, (dict, list)) else str(found)
            values.append(value)
        if len(runs) == 1 or len(set(values)) > 1:
            for run, value in zip(runs, values):
                if value is not None:
                    run["differs"][key] = value


def _field(run: dict, key: str) -> Any:
    if key in run and key not in ("metrics", "config"):
        return run[key]
    if key in run["metrics"]:
        return run["metrics"][key]
    own = dict(_split(o) for o in run["overrides"])
    return own[key] if key in own else _lookup(run["config"], key)


def matches(run: dict, filters: list[str]) -> bool:
    """Every KEY=PATTERN holds (fnmatch patterns: model=*ae, status=fail*)."""
    for item in filters:
        key, _, pattern = item.partition("=")
        value = _field(run, key)
        if value is None or not fnmatch.fnmatchcase(str(value), pattern):
            return False
    return True


def metric_columns(runs: list[dict], wanted: str | None) -> list[str]:
    if wanted:
        return [m.strip() for m in wanted.split(",") if m.strip()]
    present = {k for run in runs for k in run["metrics"]}
    known = [m for m in KEY_METRICS if m in present]
    others = sorted(
        k
        for k in present
        if k.startswith("test/") and k.count("/") == 1 and k not in known and k != "test/loss"
    )
    return (known + others or ["test/loss"])[:MAX_METRIC_COLUMNS]


def _sort_key(key: str):
    def sort_key(run: dict):
        value = _field(run, key)
        if value is None:
            return (2, 0.0, "")
        if isinstance(value, bool):
            value = str(value)
        try:  # numbers sort as numbers, also when they come from an override's text ("8" < "32")
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))

    return sort_key


# ---------------------------------------------------------------- output


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _overrides_text(run: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in run["differs"].items())


def print_table(runs: list[dict], metrics: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column, justify in (
        ("name", "left"),
        ("model", "left"),
        ("dataset", "left"),
        ("overrides", "left"),
        ("status", "left"),
        ("epochs", "right"),
        ("wall", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for run in runs:
        status = run["status"] or "?"
        shown = f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"
        table.add_row(
            run["name"],
            run["model"] or "?",
            run["dataset"] or "?",
            _overrides_text(run),
            shown,
            _number(run["epochs"]),
            _wall(run["wall_time_s"]),
            *(_number(run["metrics"].get(m)) for m in metrics),
        )
    # piped into a file or a pager: wide enough for the sweep folders' names
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    Console(width=width).print(table)
    failed = [run for run in runs if run["status"] == "failed" and run.get("error")]
    for run in failed:
        Console(stderr=True, width=width).print(
            f"[red]failed[/] {run['name']}: {run['error']}", highlight=False
        )


def print_csv(runs: list[dict], metrics: list[str]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(
        ["name", "model", "dataset", "overrides", "status", "epochs", "wall_time_s", *metrics]
    )
    for run in runs:
        writer.writerow(
            [
                run["name"],
                run["model"],
                run["dataset"],
                _overrides_text(run),
                run["status"],
                run["epochs"],
                run["wall_time_s"],
                *(run["metrics"].get(m, "") for m in metrics),
            ]
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnlab runs",
        description="Compare runs: one row per run folder under DIR (metrics.json, .hydra/, TensorBoard events).",
        epilog="examples:\n  nnlab runs\n  nnlab runs outputs/multirun --sort test/mse\n"
        "  nnlab runs --filter model=vae --filter status=finished --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs", nargs="*", metavar="DIR", help="folders to search for runs (default: outputs)"
    )
    parser.add_argument(
        "--sort",
        metavar="KEY",
        help="sort by a metric (test/mse), a column (wall_time_s, "
        "status) or a config key (model.latent_dim); runs without it go last",
    )
    parser.add_argument("-r", "--reverse", action="store_true", help="sort in descending order")
    parser.add_argument(
        "--filter",
        metavar="KEY=PATTERN",
        action="append",
        default=[],
        help="keep runs whose KEY matches (model=vae, status=fail*, model.latent_dim=8); "
        "repeat to combine",
    )
    parser.add_argument(
        "--metrics", metavar="A,B", help="the metric columns (default: the key test metrics)"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the runs as JSON (every metric)")
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `nnlab runs --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    roots = [Path(d) for d in (args.dirs or ["outputs"])]
    for root in roots:
        if not root.is_dir():
            print(
                f"nnlab: error: {root} is not a folder. Give the folder your runs are in "
                "(nnlab train writes them under outputs/), e.g. `nnlab runs outputs`.",
                file=sys.stderr,
            )
            return 2
    for item in args.filter:
        if "=" not in item:
            print(
                f"nnlab: error: --filter {item} must be KEY=PATTERN, e.g. --filter model=vae.",
                file=sys.stderr,
            )
            return 2
    runs = []
    for root in roots:
        for run_dir in find_runs(root):
            run = read_run(run_dir, root)
            if len(roots) > 1:
                run["name"] = str(Path(root.name) / run["name"])
            runs.append(run)
    runs = [run for run in runs if matches(run, args.filter)]
    runs.sort(
        key=_sort_key(args.sort) if args.sort else (lambda run: run["name"]), reverse=args.reverse
    )
    if args.sort and args.reverse:  # runs without the key stay last
        runs.sort(key=lambda run: _field(run, args.sort) is None)
    differing_overrides(runs)
    metrics = metric_columns(runs, args.metrics)
    if args.json:
        print(
            json.dumps(
                [{k: v for k, v in run.items() if k != "config"} for run in runs],
                indent=2,
                default=str,
            )
        )
    elif args.csv:
        print_csv(runs, metrics)
    elif not runs:
        where = " ".join(str(r) for r in roots)
        print(
            f"No runs under {where}{' match the filters' if args.filter else ''}. "
            "Train one with `nnlab train`.",
            file=sys.stderr,
        )
    else:
        runs_word = "run" if len(runs) == 1 else "runs"
        print_table(
            runs, metrics, f"{len(runs)} {runs_word} under {' '.join(str(r) for r in roots)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
