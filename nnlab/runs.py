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
import stat
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
STATUS_STYLE = {
    "finished": "green",
    "failed": "red",
    "interrupted": "yellow",
    "running": "cyan",
    "unreadable": "magenta",
}
MAX_TEXT = 300  # characters of an error or an override shown; run folders can hold anything
# C0 and C1 control characters (escape sequences, bells, carriage returns): never printed
CONTROL = dict.fromkeys([*range(0x00, 0x20), *range(0x7F, 0xA0)])


def noise_keys() -> tuple[str, ...]:
    """Overrides that change nothing in the result, never shown as a difference between runs: the
    keys the packaged hydra config leaves out of a sweep job's folder name, and hydra.*."""
    import yaml

    from nnlab.trust import bounded_text

    try:
        from importlib.resources import files

        hydra_cfg = yaml.safe_load(bounded_text(files("nnlab.configs") / "hydra" / "default.yaml"))
        keys = hydra_cfg["job"]["config"]["override_dirname"]["exclude_keys"]
    except Exception:  # noqa: BLE001 - an installation without its configs: hide nothing
        keys = []
    return (*(str(k) for k in keys), "hydra.")


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """Text from a run folder, safe to print: control characters dropped, at most `limit` chars."""
    text = str(value).translate(CONTROL)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- finding and reading runs


def _is_run(folder: Path, names: set[str]) -> bool:
    return (
        "metrics.json" in names
        or (folder / ".hydra" / "config.yaml").is_file()
        or any(n.startswith("events.out.tfevents.") for n in names)
    )


def find_runs(root: Path) -> Iterator[Path]:
    """Every run folder under root (root itself included); a run's own sub-folders are not
    searched."""
    for folder, dirs, files in os.walk(root):
        path = Path(folder)
        if _is_run(path, set(files)):
            dirs[:] = []  # checkpoints/, .hydra/, csv/ belong to this run
            yield path
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))


def _yaml(path: Path) -> Any:
    import yaml

    from nnlab.trust import bounded_text

    try:
        return yaml.safe_load(bounded_text(path))
    except (OSError, ValueError, RecursionError, yaml.YAMLError):
        return None


def _str(value: Any) -> str | None:
    return clean(value, 200) if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and value == value and abs(value) != float("inf") else None


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    numbers = {clean(k, 100): _number(v) for k, v in value.items() if isinstance(k, str)}
    return {k: v for k, v in numbers.items() if v is not None}


def _texts(value: Any) -> list[str]:
    return [clean(v) for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _process_start(pid: int) -> float | None:
    """When process pid started (seconds since the epoch), from /proc; None where there is no
    /proc."""
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
    interrupted: killed, out of memory, or the machine went down before it could say so. A status
    nnlab never writes reads as 'unreadable'."""
    status = record.get("status")
    if not isinstance(status, str) or status not in STATUS_STYLE:
        return "unreadable"
    resumes = record.get("resumes")
    latest = resumes[-1] if isinstance(resumes, list) and resumes else record
    started = latest.get("started") if isinstance(latest, dict) else None
    pid = _int(record.get("pid"))
    if status == "running" and record.get("host") == socket.gethostname() and pid and pid > 0:
        if not _pid_runs(pid, _epoch_of(started if isinstance(started, str) else None)):
            return "interrupted"
    return status


def _tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file: uint64 length, uint32 crc, data, uint32 crc (crcs not
    checked). Only a regular file is opened, and no record longer than what is left of it is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            if length > info.st_size - f.tell():
                return  # cut short by a dying writer, or not a TFRecord at all
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
            try:
                event = event_pb2.Event.FromString(data)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged file ends here
                break
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
    """One run as a flat dict: what `--json` prints for it. Whatever the folder holds, the result
    has the same keys and types; a record that cannot be read makes the run 'unreadable'."""
    from nnlab.trust import bounded_text

    name = clean(run_dir.relative_to(root) if run_dir != root else run_dir.name, 200)
    run = {
        "name": name,
        "path": clean(run_dir.resolve(), 1000),
        "model": None,
        "dataset": None,
        "overrides": [],
        "status": None,
        "error": None,
        "epochs": None,
        "global_step": None,
        "wall_time_s": None,
        "started": None,
        "host": None,
        "metrics": {},
        "source": "metrics.json",
        "config": {},
    }
    record: Any = None
    if os.path.lexists(run_dir / "metrics.json"):
        try:
            record = json.loads(bounded_text(run_dir / "metrics.json"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as err:
            run.update(status="unreadable", error=clean(f"metrics.json: {err}"))
            record = {}
    try:
        config = _yaml(run_dir / ".hydra" / "config.yaml")
        run["config"] = config if isinstance(config, dict) else {}
        overrides = _yaml(run_dir / ".hydra" / "overrides.yaml")
        if not isinstance(overrides, list):
            overrides = (record or {}).get("overrides")
        run["overrides"] = _texts(overrides)
        if record:
            run.update(
                model=_str(record.get("model")),
                dataset=_str(record.get("dataset")),
                status=live_status(record),
                error=clean(record["error"]) if isinstance(record.get("error"), str) else None,
                epochs=_int(record.get("epochs")),
                global_step=_int(record.get("global_step")),
                wall_time_s=_number(record.get("wall_time_s")),
                started=_str(record.get("started")),
                host=_str(record.get("host")),
                metrics=_metrics(record.get("metrics")),
            )
        elif record is None:
            run["source"] = "events"
            events = read_events(run_dir)
            run.update({k: v for k, v in events.items() if v is not None})
        run["model"] = run["model"] or _str(_lookup(run["config"], "model.name"))
        run["dataset"] = run["dataset"] or _str(_lookup(run["config"], "dataset.name"))
    except Exception as err:  # noqa: BLE001 - one damaged folder must not hide the others
        run.update(status="unreadable", error=clean(f"{type(err).__name__}: {err}"))
    if run["status"] == "running" and run["started"]:
        began = _epoch_of(run["started"])
        if began:
            run["wall_time_s"] = round(time.time() - began, 3)
    return run


# ---------------------------------------------------------------- comparing runs


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def differing_overrides(runs: list[dict]) -> None:
    """Set run['differs'] to the overrides whose value is not the same in every listed run (a run
    without that override shows its config's value where it has one). One run: all its overrides."""
    parsed = [dict(_split(o) for o in run["overrides"]) for run in runs]
    noise = noise_keys()
    keys = sorted(
        {k for p in parsed for k in p if not k.startswith(noise) and k not in ("model", "dataset")}
    )
    for run in runs:
        run["differs"] = {}
    for key in keys:
        values = []
        for run, own in zip(runs, parsed):
            value = own.get(key)
            if value is None:
                found = _lookup(run["config"], key)
                simple = found is None or isinstance(found, (dict, list))
                value = None if simple else clean(found, 100)
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


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else clean(value)


def _overrides_text(run: dict) -> str:
    return clean(" ".join(f"{k}={v}" for k, v in run["differs"].items()), 1000)


def print_table(runs: list[dict], metrics: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

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
    for run in runs:  # Text: run data is never read as Rich markup
        status = run["status"] or "?"
        table.add_row(
            Text(run["name"]),
            Text(run["model"] or "?"),
            Text(run["dataset"] or "?"),
            Text(_overrides_text(run)),
            Text(status, style=STATUS_STYLE.get(status, "white")),
            _shown(run["epochs"]),
            _wall(run["wall_time_s"]),
            *(_shown(run["metrics"].get(m)) for m in metrics),
        )
    # piped into a file or a pager: wide enough for the sweep folders' names
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    Console(width=width).print(table)
    failed = [r for r in runs if r["status"] in ("failed", "unreadable") and r.get("error")]
    for run in failed:
        line = Text.assemble((run["status"], "red"), f" {run['name']}: {run['error']}")
        Console(stderr=True, width=width).print(line, highlight=False)


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
        description="Compare runs: one row per run folder under DIR (metrics.json, .hydra/, "
        "TensorBoard events).",
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
