"""`nnlab runs [DIR ...]`: a table of every run under DIR (default outputs/) to compare them.

    nnlab runs                                   # every run under outputs/, at most 100 columns
    nnlab runs outputs/multirun/2026-11-23_10-00-00-000000 --sort test/mse
    nnlab runs --best test/mse --paths           # the best run's folder (nnlab sample $(...))
    nnlab runs --filter model=vae --filter status=finished --json
    nnlab runs --prune-failed                    # delete the folders of failed runs

A run is a folder with a metrics.json (written by nnlab train), a .hydra/ folder or TensorBoard
events. The table shows a short name per run, the model, the overrides that differ between the
listed runs (one column each), status, epochs, wall time and the metrics that say most about each
family (its key metric next to its baseline: test/mse and test/pca_mse, test/fid and
test/fid_floor...), and `nnlab eval` results; `--wide` shows everything. It reads metrics.json and
.hydra/*.yaml, and the event files (TFRecord framing read here, the records decoded with
TensorBoard's protobuf) for runs that died without a metrics.json. It never imports torch, so it
answers at once.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import re
import socket
import stat
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nnlab.errors import ConfigError

# the final metric that says most about a run, the first of these it has (a family this list does
# not know gets its first test/ metric); its baseline is the test/ metric named after it
# (test/pca_mse, test/fid_floor, test/bpc_ngram, test/mae_seasonal_naive, test/rmse_item_mean)
KEY_METRICS = (
    "test/elbo", "test/fid", "test/acc", "test/psnr", "test/mse", "test/rmse", "test/bpc",
    "test/perplexity", "test/bleu", "test/mae", "test/pseudo_ll", "test/bce", "test/recon",
)  # fmt: skip
# besides the key metric and its baseline, worth a column when a family has them
SECOND_METRICS = ("test/nll_iw", "test/label_acc", "test/psnr", "test/mse", "test/kl")
# metrics where more is better (the rest: less is better), by the last part of the name
HIGHER_IS_BETTER = ("acc", "accuracy", "elbo", "psnr", "bleu", "auc", "f1", "r2", "precision",
                    "recall", "pseudo_ll", "log_likelihood", "ll", "score")  # fmt: skip
MAX_METRIC_COLUMNS = 6
WIDTH = 100  # the default table fits this many columns when the terminal does not say
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
        # libyaml's safe loader where PyYAML has it: the same data, ten times faster
        return yaml.load(bounded_text(path), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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


def _evals(value: Any) -> dict[str, dict]:
    """`nnlab eval` results (metrics.json's eval): {dataset: {metrics, checkpoint, time}}."""
    if not isinstance(value, dict):
        return {}
    return {
        clean(name, 100): {
            "metrics": _metrics(entry.get("metrics")),
            "checkpoint": _str(entry.get("checkpoint")),
            "time": _str(entry.get("time")),
        }
        for name, entry in value.items()
        if isinstance(name, str) and isinstance(entry, dict)
    }


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
    epoch = scalars.get(
        "train/epoch", scalars.get("epoch")
    )  # nnlab.viz.TensorBoardLogger: train/epoch
    metrics = {t: v for t, (_, v) in scalars.items() if t not in ("epoch", "train/epoch")}
    return {
        "metrics": metrics,
        "epochs": int(epoch[1]) + 1 if epoch else None,
        "wall_time_s": round(max(times) - min(times), 3) if times else None,
        "status": "finished" if any(t.startswith("test/") for t in metrics) else "interrupted",
    }


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run as a flat dict: what `--json` prints for it. Whatever the folder holds, the result
    has the same keys and types; a record that cannot be read makes the run 'unreadable'."""
    name = clean(run_dir.relative_to(root) if run_dir != root else run_dir.name, 200)
    run = _blank_run(name, clean(run_dir.resolve(), 1000))
    record = _read_record(run_dir, run)
    try:
        _fill_run(run, run_dir, record)
    except Exception as err:  # noqa: BLE001 - one damaged folder must not hide the others
        run.update(status="unreadable", error=clean(f"{type(err).__name__}: {err}"))
    if run["status"] == "running" and run["started"]:
        began = _epoch_of(run["started"])
        if began:
            run["wall_time_s"] = round(time.time() - began, 3)
    return run


def _blank_run(name: str, path: str) -> dict[str, Any]:
    """Every key of a listed run, each with its 'unknown' value."""
    return {
        "name": name,
        "path": path,
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
        "eval": {},
        "job": None,
        "source": "metrics.json",
        "config": {},
    }


def _read_record(run_dir: Path, run: dict[str, Any]) -> Any:
    """metrics.json as a dict; None when there is none; {} (and the run 'unreadable') when it
    cannot be read or is not a JSON object."""
    from nnlab.trust import bounded_text

    record: Any = None
    if os.path.lexists(run_dir / "metrics.json"):
        try:
            record = json.loads(bounded_text(run_dir / "metrics.json"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as err:
            run.update(status="unreadable", error=clean(f"metrics.json: {err}"))
            record = {}
    return record


def _fill_run(run: dict[str, Any], run_dir: Path, record: Any) -> None:
    """The run's config and overrides from .hydra/, the rest from its record (or, without a
    metrics.json, from its TensorBoard events); the model and dataset from the config if unset."""
    config = _yaml(run_dir / ".hydra" / "config.yaml")
    run["config"] = config if isinstance(config, dict) else {}
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = (record or {}).get("overrides")
    run["overrides"] = _texts(overrides)
    if record:
        run.update(_record_fields(record))
    elif record is None:
        run["source"] = "events"
        events = read_events(run_dir)
        run.update({k: v for k, v in events.items() if v is not None})
    if (run_dir.parent / "multirun.yaml").is_file():  # a job of a sweep: its number in it
        run["job"] = _int(_lookup(_yaml(run_dir / ".hydra" / "hydra.yaml"), "hydra.job.num"))
    run["model"] = run["model"] or _str(_lookup(run["config"], "model.name"))
    run["dataset"] = run["dataset"] or _str(_lookup(run["config"], "dataset.name"))


def _record_fields(record: dict) -> dict[str, Any]:
    """A run's fields from its metrics.json, each of the type `--json` promises."""
    return dict(
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
        eval=_evals(record.get("eval")),
    )


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


def higher_is_better(metric: str) -> bool:
    """Whether more is better for this metric (accuracy, ELBO, PSNR...); less for losses, errors,
    distances (mse, fid, bpc, nll...)."""
    last = metric.rsplit("/", 1)[-1].lower()
    return last in HIGHER_IS_BETTER or last.startswith("acc") or last.endswith(("_acc", "_ll"))


def key_metric(metrics: dict[str, float]) -> str | None:
    """The final metric that says most about a run (see KEY_METRICS), or None."""
    known = next((m for m in KEY_METRICS if m in metrics), None)
    if known:
        return known
    tests = sorted(k for k in metrics if k.startswith("test/") and k.count("/") == 1)
    return next((k for k in tests if k != "test/loss"), "test/loss" if tests else None)


def baseline_of(metric: str, metrics: dict[str, float]) -> str | None:
    """The baseline reported beside a metric: test/pca_mse beside test/mse, test/fid_floor beside
    test/fid, test/bpc_ngram beside test/bpc (a test/ metric named <metric>_* or *_<metric>)."""
    stage, _, name = metric.partition("/")
    for key in sorted(metrics):
        other_stage, _, other = key.partition("/")
        if other_stage == stage and "/" not in other and other != name:
            if other.startswith(name + "_") or other.endswith("_" + name):
                return key
    return None


def _field(run: dict, key: str) -> Any:
    if key in run and key not in ("metrics", "config", "eval"):
        return run[key]
    if key in run["metrics"]:
        return run["metrics"][key]
    if key.startswith("eval/"):  # eval/<dataset>/<metric>: an `nnlab eval` result
        _, dataset, metric = (key.split("/", 2) + ["", ""])[:3]
        return run["eval"].get(dataset, {}).get("metrics", {}).get(metric)
    own = dict(_split(o) for o in run["overrides"])
    return own[key] if key in own else _lookup(run["config"], key)


def _config_keys(config: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(config, dict):
        for k, v in config.items():
            yield from _config_keys(v, f"{prefix}{k}.")
    if prefix:
        yield prefix[:-1]


def known_keys(runs: list[dict]) -> list[str]:
    """Every key --sort, --filter, --metrics and --best can name for these runs: the columns,
    their metrics, `eval/<dataset>/<metric>`, their overrides and config keys."""
    columns = ["name", "path", "model", "dataset", "status", "error", "epochs", "global_step"]
    columns += ["wall_time_s", "started", "host", "source", "job"]
    metrics = {m for run in runs for m in run["metrics"]}
    evals = {f"eval/{d}/{m}" for run in runs for d, e in run["eval"].items() for m in e["metrics"]}
    config = {k for run in runs for k in _config_keys(run["config"])}
    overrides = {_split(o)[0] for run in runs for o in run["overrides"]}
    return [*columns, *sorted(metrics), *sorted(evals), *sorted(overrides | config)]


class UsageError(ConfigError):
    """A mistake on `nnlab runs`' command line (or nnlab.runs()): one paragraph, exit code 2."""


def check_key(key: str, runs: list[dict], option: str) -> None:
    """A UsageError, with the closest keys, when no listed run knows `key` (a typo would otherwise
    sort, filter or show nothing, silently)."""
    import difflib

    known = known_keys(runs)
    if not runs or key in known or any(k.startswith(key + ".") for k in known):
        return
    last = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    close = [k for k in known if k != key and k.rsplit("/", 1)[-1].rsplit(".", 1)[-1] == last][:3]
    close = close or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # test/acuracy -> test/acc: compare the last parts
        ends = {k.rsplit("/", 1)[-1].rsplit(".", 1)[-1]: k for k in reversed(known)}
        close = [ends[e] for e in difflib.get_close_matches(last, list(ends), n=1, cutoff=0.6)]
    metrics = sorted({m for run in runs for m in run["metrics"]})
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UsageError(
        f"{option} {key}: no listed run has a metric, column or config key '{key}'.{hint} "
        f"The runs' metrics are: {', '.join(metrics[:12]) or 'none'}"
        f"{', ...' if len(metrics) > 12 else ''}; config keys are written as in overrides "
        "(model.latent_dim), `nnlab eval` results as eval/<dataset>/<metric>."
    )


def matches(run: dict, filters: list[str]) -> bool:
    """Every KEY=PATTERN holds (fnmatch patterns: model=*ae, status=fail*)."""
    for item in filters:
        key, _, pattern = item.partition("=")
        value = _field(run, key)
        if value is None or not fnmatch.fnmatchcase(str(value), pattern):
            return False
    return True


def metric_columns(runs: list[dict], wanted: str | None, wide: bool = False) -> list[str]:
    """The metric columns: those asked for; else each listed family's key metric next to its
    baseline, then the second metrics its runs have (and in --wide every test/ metric)."""
    if wanted:
        return [m.strip() for m in wanted.split(",") if m.strip()]
    columns: list[str] = []
    for run in runs:
        key = key_metric(run["metrics"])
        if key is None:
            continue
        base = baseline_of(key, run["metrics"])
        for m in (key, base):
            if m and m not in columns:
                columns.append(m)
    present = {k for run in runs for k in run["metrics"]}
    columns += [m for m in SECOND_METRICS if m in present and m not in columns]
    if wide:
        columns += sorted(
            k
            for k in present
            if k.startswith("test/") and k.count("/") == 1 and k not in columns and k != "test/loss"
        )
    return (columns or (["test/loss"] if "test/loss" in present else []))[:MAX_METRIC_COLUMNS]


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


def best_runs(runs: list[dict], spec: str) -> list[dict]:
    """--best METRIC: the runs that have it, best first (max:/min: force the direction)."""
    direction, _, metric = spec.rpartition(":")
    high = direction == "max" if direction in ("max", "min") else higher_is_better(metric)
    ranked = [run for run in runs if isinstance(_field(run, metric), (int, float))]
    ranked = [run for run in ranked if run["status"] in ("finished", None)] or ranked
    return sorted(ranked, key=lambda run: _field(run, metric), reverse=high)


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


def _overrides_text(run: dict, short: bool = False) -> str:
    items = run["differs"].items()
    return clean(
        " ".join(f"{_short_keys(run['differs'])[k] if short else k}={v}" for k, v in items)
    )


def _short_keys(keys) -> dict[str, str]:
    """model.latent_dim -> latent_dim, unless two keys would read the same."""
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: last if lasts.count(last) == 1 else k for k, last in zip(keys, lasts)}


STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)_(\d\d)-(\d\d)-(\d\d)(?:-(\d+))?$")


def _stamp(part: str) -> str | None:
    """2026-11-30_02-00-01-112375 (nnlab's run folder names) -> 11-30 02:00:01."""
    found = STAMP.match(part)
    return f"{found[2]}-{found[3]} {found[4]}:{found[5]}:{found[6]}" if found else None


def short_names(runs: list[dict]) -> list[str]:
    """Names for the default table: the time a run started (its folder's name), a sweep's job as
    its sweep's time and #job; other folders by their relative path, shortened in the middle."""
    names = []
    for run in runs:
        parts = run["name"].split("/")
        stamp = _stamp(parts[-1])
        if stamp:
            name = stamp
        elif len(parts) > 1 and _stamp(parts[-2]):  # a sweep's job
            job = f"#{run['job']}" if run["job"] is not None else parts[-1]
            name = f"{_stamp(parts[-2])} {job}"
        else:
            name = (
                run["name"] if len(run["name"]) <= 28 else f"{run['name'][:12]}…{run['name'][-15:]}"
            )
        names.append(name)
    repeated = {n for n in names if names.count(n) > 1}
    return [run["name"] if n in repeated else n for run, n in zip(runs, names)]


def _metric_text(metric: str | None, metrics: dict) -> str:
    if not metric or metric not in metrics:
        return ""
    return f"{metric.split('/', 1)[-1]} {_shown(metrics[metric])}"


def _eval_text(run: dict) -> str:
    """`nnlab eval` results in a cell: each dataset with its key metric."""
    parts = []
    for dataset, entry in run["eval"].items():
        metric = key_metric(entry["metrics"])
        parts.append(f"{dataset} {_metric_text(metric, entry['metrics'])}".strip())
    return clean("; ".join(parts), 60)


def _columns(
    runs: list[dict], metrics: list[str], wide: bool, per_family: bool
) -> list[tuple[str, str, list]]:
    """(header, justify, cells) of each column of the table. per_family: a `metric` and a
    `baseline` column that name each run's own key metric, instead of a column per metric."""
    cols = []
    if wide:
        cols.append(("name", "left", [run["name"] for run in runs]))
    else:
        cols.append(("run", "left", short_names(runs)))
    cols.append(("model", "left", [run["model"] or "?" for run in runs]))
    datasets = {run["dataset"] for run in runs}
    if wide or len(datasets) > 1:
        cols.append(("dataset", "left", [run["dataset"] or "?" for run in runs]))
    keys = list(dict.fromkeys(k for run in runs for k in run["differs"]))
    if wide or len(keys) > 3:
        cells = [_overrides_text(run, short=not wide) for run in runs]
        if any(cells):
            cols.append(("overrides", "left", cells))
    else:
        for key, short in _short_keys(keys).items():
            cols.append((short, "left", [clean(run["differs"].get(key, ""), 24) for run in runs]))
    cols.append(("status", "left", [run["status"] or "?" for run in runs]))
    cols.append(("epochs" if wide else "ep", "right", [_shown(run["epochs"]) for run in runs]))
    cols.append(("wall", "right", [_wall(run["wall_time_s"]) for run in runs]))
    if per_family:  # several families: each run's key metric and its baseline, named in the cell
        keys_ = [key_metric(run["metrics"]) for run in runs]
        bases = [baseline_of(k, r["metrics"]) if k else None for k, r in zip(keys_, runs)]
        cols.append(
            ("metric", "left", [_metric_text(k, r["metrics"]) for k, r in zip(keys_, runs)])
        )
        if any(bases):
            cols.append(
                ("baseline", "left", [_metric_text(b, r["metrics"]) for b, r in zip(bases, runs)])
            )
    for metric in metrics:
        cols.append((metric, "right", [_shown(run["metrics"].get(metric)) for run in runs]))
    if any(run["eval"] for run in runs):
        cols.append(("eval", "left", [_eval_text(run) for run in runs]))
    return cols


def _width(cols) -> int:
    """Characters of a table line: the widest cell of each column, 3 between columns."""
    return sum(max(len(h), *(len(str(c)) for c in cells)) + 3 for h, _, cells in cols) - 3


def fit(cols, width: int):
    """Leave out columns until the table fits `width` characters: the metric columns beyond the
    first two (from the right), then epochs, wall time, eval, dataset and the baseline; the
    names are cut last (by the table)."""
    droppable = ["ep", "wall", "eval", "dataset", "baseline"]
    while _width(cols) > width:
        metrics = [i for i, (h, j, _) in enumerate(cols) if j == "right" and "/" in h]
        if len(metrics) > 2:
            del cols[metrics[-1]]
            continue
        headers = [c[0] for c in cols]
        drop = next((d for d in droppable if d in headers), None)
        if drop is None:
            break
        droppable.remove(drop)
        del cols[headers.index(drop)]
    return cols


def _terminal_width() -> int | None:
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return os.get_terminal_size(sys.stdout.fileno()).columns
    return None


def print_table(
    runs: list[dict], metrics: list[str], title: str, wide: bool = False, chosen: bool = False
) -> None:
    """The table; `chosen`: the metric columns were asked for (--metrics, --best)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    terminal = _terminal_width()
    # --wide: every column, as long as the lines get; else the terminal's width (100 in a pipe)
    width = max(terminal or 0, 1000) if wide else (terminal or WIDTH)
    families = {key_metric(run["metrics"]) for run in runs} - {None}
    per_family = not wide and len(families) > 1
    if per_family and not chosen:
        metrics = []
    cols = _columns(runs, metrics, wide, per_family)
    if not wide:
        cols = fit(cols, width)
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False
    )
    for header, justify, _ in cols:
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis")
    status_col = [h for h, _, _ in cols].index("status")
    for i in range(len(runs)):  # Text: run data is never read as Rich markup
        cells = [Text(str(cells[i])) for _, _, cells in cols]
        cells[status_col].stylize(STATUS_STYLE.get(str(cells[status_col]), "white"))
        table.add_row(*cells)
    console = Console(width=width if wide else min(width, max(_width(cols) + 2, 40)))
    console.print(table)
    failed = [r for r in runs if r["status"] in ("failed", "unreadable") and r.get("error")]
    for run in failed:
        line = Text.assemble((run["status"], "red"), f" {run['name']}: {run['error']}")
        Console(stderr=True, width=terminal or (1000 if wide else WIDTH)).print(
            line, highlight=False
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
                *(_field(run, m) if _field(run, m) is not None else "" for m in metrics),
            ]
        )


# ---------------------------------------------------------------- pruning failed runs


def prune(runs: list[dict], roots: list[Path], yes: bool) -> int:
    """Delete the folders of the listed failed runs (each under its lock, its status read again
    under it), and the folders that this leaves empty up to DIR."""
    failed = [run for run in runs if run["status"] == "failed"]
    if not failed:
        print("nnlab runs: no failed runs to delete.")
        return 0
    print(f"Failed runs ({len(failed)}):")
    for run in failed:
        print(f"  {run['name']}: {clean(run['error'] or 'no reason recorded', 80)}")
    if not yes:
        if not sys.stdin.isatty():
            print("Add --yes to delete these run folders.", file=sys.stderr)
            return 1
        answer = input(f"Delete these {len(failed)} run folders? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 0
    deleted = sum(_delete_failed(run, roots) for run in failed)
    print(f"Deleted {deleted} run folder{'s' if deleted != 1 else ''}.")
    return 0


def _delete_failed(run: dict, roots: list[Path]) -> bool:
    """Delete one failed run's folder if, under its lock, it is still failed and under a listed
    DIR, then the folders this leaves empty up to DIR; whether it was deleted."""
    import shutil

    from nnlab.run_folder import RunLock

    folder = Path(run["path"])
    try:
        with RunLock(folder, "nnlab runs --prune-failed"):
            root = next((r for r in roots if _inside(folder, r)), None)
            if root is None or read_run(folder, root)["status"] != "failed":
                return False  # resumed meanwhile, or not under a listed folder
            shutil.rmtree(folder)
    except Exception as err:  # noqa: BLE001 - in use, or the disk said no: keep going
        print(f"nnlab runs: kept {run['name']}: {clean(err, 200)}", file=sys.stderr)
        return False
    parent = folder.parent
    while parent != root.resolve() and _inside(parent, root) and not any(parent.iterdir()):
        parent.rmdir()  # an empty sweep or <model>/<dataset> folder
        parent = parent.parent
    return True


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnlab runs",
        description="Compare runs: one row per run folder under DIR (metrics.json, .hydra/, "
        "TensorBoard events). The table fits the terminal (100 columns in a pipe): a short name, "
        "the overrides that differ, each family's key metric next to its baseline.",
        epilog="examples:\n  nnlab runs\n  nnlab runs outputs/multirun --sort test/mse\n"
        "  nnlab runs --best test/mse --top 3\n"
        "  nnlab sample $(nnlab runs outputs --best test/mse --paths) out=best.png\n"
        "  nnlab runs --filter model=vae --filter status=finished --json\n"
        "  nnlab runs --prune-failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs", nargs="*", metavar="DIR", help="folders to search for runs (default: outputs)"
    )
    _selection_options(parser)
    _output_options(parser)
    return parser.parse_args(argv)


def _selection_options(parser: argparse.ArgumentParser) -> None:
    """Which runs, in which order: --sort, --reverse, --best, --top, --filter."""
    parser.add_argument(
        "--sort",
        metavar="KEY",
        help="sort by a metric (test/mse), a column (wall_time_s, "
        "status) or a config key (model.latent_dim); runs without it go last",
    )
    parser.add_argument("-r", "--reverse", action="store_true", help="sort in descending order")
    parser.add_argument(
        "--best",
        metavar="METRIC",
        help="the runs with the best METRIC first (less is better for losses, errors and "
        "distances, more for accuracy, ELBO, PSNR...; max:METRIC or min:METRIC to say which); "
        "shows the best one unless --top says how many",
    )
    parser.add_argument("--top", metavar="N", type=int, help="only the first N runs")
    parser.add_argument(
        "--filter",
        metavar="KEY=PATTERN",
        action="append",
        default=[],
        help="keep runs whose KEY matches (model=vae, status=fail*, model.latent_dim=8); "
        "repeat to combine",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    """What is shown of them, and how: the columns, JSON/CSV/paths, or pruning the failed ones."""
    parser.add_argument(
        "--metrics",
        metavar="A,B",
        help="the metric columns (default: each family's key metric and its baseline); "
        "eval/<dataset>/<metric> for `nnlab eval` results",
    )
    parser.add_argument(
        "--wide", action="store_true", help="every column: paths, all differing overrides"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the runs as JSON (every metric)")
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    out.add_argument(
        "--paths", action="store_true", help="print only the run folders, one per line"
    )
    out.add_argument(
        "--prune-failed",
        action="store_true",
        help="delete the folders of the (listed) failed runs, after asking",
    )
    parser.add_argument("--yes", action="store_true", help="--prune-failed without asking")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        import textwrap

        text = textwrap.fill(f"nnlab: error: {err}", width=WIDTH, subsequent_indent="  ")
        print(text, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nnlab runs --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _check_args(args: argparse.Namespace) -> list[Path]:
    roots = [Path(d) for d in (args.dirs or ["outputs"])]
    for root in roots:
        if root.is_dir():
            continue
        if not args.dirs:
            raise UsageError(
                f"there is no outputs/ folder in {Path.cwd()}: nnlab train writes its runs there. "
                "Train one with `nnlab train` (e.g. `nnlab train trainer.max_epochs=1`), or give "
                "the folder your runs are in: `nnlab runs PATH`."
            )
        raise UsageError(
            f"{root} is not a folder. Give the folder your runs are in (nnlab train writes them "
            "under outputs/)."
        )
    for item in args.filter:
        if "=" not in item:
            raise UsageError(f"--filter {item} must be KEY=PATTERN, e.g. --filter model=vae.")
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top {args.top}: give a number of runs >= 1, e.g. --top 5.")
    return roots


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    roots = _check_args(args)
    runs = _collect(roots)
    _check_keys(args, runs)
    runs = _select(runs, args)
    differing_overrides(runs)
    wanted = args.metrics or (args.best.rpartition(":")[2] if args.best else None)
    metrics = metric_columns(runs, wanted, wide=args.wide or args.csv)
    if args.prune_failed:
        return prune(runs, roots, args.yes)
    _show(runs, metrics, roots, args)
    return 0


def _collect(roots: list[Path]) -> list[dict]:
    """Every run under the folders; with several, each name starts with its folder's."""
    runs = []
    for root in roots:
        for run_dir in find_runs(root):
            run = read_run(run_dir, root)
            if len(roots) > 1 and run_dir != root:
                run["name"] = str(Path(root.name) / run["name"])
            runs.append(run)
    return runs


def _check_keys(args: argparse.Namespace, runs: list[dict]) -> None:
    """Every key named by --filter, --sort, --best and --metrics exists in some run."""
    asked = [(f"--filter {f}", f.partition("=")[0]) for f in args.filter]
    asked += [("--sort", args.sort), ("--best", (args.best or "").rpartition(":")[2])]
    asked += [("--metrics", m.strip()) for m in (args.metrics or "").split(",") if m.strip()]
    for option, key in asked:
        if key:
            check_key(key, runs, option.split(" ")[0])


def _select(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    """The runs that --filter keeps, in --sort's order (default: as they started), then --best
    and --top."""
    runs = [run for run in runs if matches(run, args.filter)]
    runs.sort(  # by default in the order they started (a sweep's jobs together)
        key=_sort_key(args.sort)
        if args.sort
        else (lambda run: (run["started"] or "", run["name"])),
        reverse=args.reverse,
    )
    if args.sort and args.reverse:  # runs without the key stay last
        runs.sort(key=lambda run: _field(run, args.sort) is None)
    if args.best:
        runs = best_runs(runs, args.best)[: args.top or 1]
    elif args.top:
        runs = runs[: args.top]
    return runs


def _show(runs: list[dict], metrics: list[str], roots: list[Path], args) -> None:
    """Print the runs as --paths, --json, --csv or the table (or say that there are none)."""
    if args.paths:
        for run in runs:
            print(run["path"])
    elif args.json:
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
        title = f"{len(runs)} {runs_word} under {' '.join(str(r) for r in roots)}"
        datasets = {run["dataset"] for run in runs}
        if len(datasets) == 1 and None not in datasets and not args.wide:
            title += f" (dataset {next(iter(datasets))})"
        print_table(runs, metrics, title, wide=args.wide, chosen=bool(args.metrics or args.best))


# nnlab.runs(...) from Python: this module is also the API function nnlab.api.runs
from nnlab.api import callable_module  # noqa: E402

callable_module(__name__)

if __name__ == "__main__":
    raise SystemExit(main())
