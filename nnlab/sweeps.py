"""Sweeps (`nnlab train -m ...`): the names of their jobs' folders, and at the end which jobs failed
(with a non-zero exit if any did).

Job folders are named by what the sweep varies: `latent_dim=8,lr=0.001` (the swept keys only,
each by its last part unless two would read the same, floats to 6 significant digits), so the
names stay short in `ls`, in TensorBoard's run list and its HParams table. `job_argv` adds the
keys a sweep's command line sets to one value to Hydra's exclude_keys; the `nnlab_job` resolver
(configs/hydra/default.yaml: sweep.subdir) writes the name.

A Hydra callback (configured under hydra.callbacks in configs/hydra/default.yaml). In a multirun,
train.py records a failing job's error in its metrics.json and returns, so the other jobs run; this
callback then reads those files back from the sweep folder. Reading the files (instead of counting
in
on_job_end) works the same for every launcher: the basic one, joblib's worker processes and
submitit's SLURM or local jobs, whose on_job_end runs in another process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(", "shuffle(", "sort(")
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


def _swept(value: str) -> bool:
    """Whether an override's value sweeps: a comma outside brackets and quotes, or a sweep
    function (range(1,4), choice(a,b), interval(0,1)...)."""
    if value.startswith(SWEEP_FUNCTIONS):
        return True
    depth, quote = 0, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def job_argv(argv: list[str], excluded: list[str]) -> list[str]:
    """A sweep's arguments with the keys it sets to one value added to the job folders' excluded
    keys (`excluded`: the packaged ones), so that the folders are named by the swept keys only."""
    args = argv[1:]
    sweeping = any(a in ("-m", "--multirun") for a in args) or any(
        a.startswith("hparams_search=") for a in args
    )
    if not sweeping or any(a.startswith(EXCLUDE_KEYS) for a in args):
        return argv
    constant = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and not arg.startswith("-") and not key.startswith("hydra") and not _swept(value):
            constant.append(key)
    if not constant:
        return argv
    keys = list(dict.fromkeys([*excluded, *constant]))
    return [*argv, f"{EXCLUDE_KEYS}=[{','.join(keys)}]"]


def _short_value(value: str) -> str:
    """0.0012345678901234567 (Optuna's floats) -> 0.00123457; anything else as it is."""
    try:
        number = float(value)
    except ValueError:
        return value
    digits = sum(c.isdigit() for c in value.lstrip("-0.").split("e")[0])
    return f"{number:.6g}" if digits > 6 and "." in value else value


def job_name(overrides, excluded, num) -> str:
    """The folder name of one job of a sweep (see the module docstring)."""
    items = []
    for override in overrides:
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        if key not in set(excluded or ()) and not key.startswith("hydra."):
            items.append((key, _short_value(value.replace("/", "_"))))
    lasts = [k.rsplit(".", 1)[-1] for k, _ in items]
    names = [f"{last if lasts.count(last) == 1 else k}={v}" for (k, v), last in zip(items, lasts)]
    return ",".join(names) or f"job{num}"


def register_resolver() -> None:
    if not OmegaConf.has_resolver("nnlab_job"):
        OmegaConf.register_new_resolver("nnlab_job", job_name)


def sweep_jobs(sweep_dir: Path, since: float = 0.0) -> list[tuple[Path, dict]]:
    """(job folder, metrics.json) of every job under sweep_dir whose record was written since
    `since`."""
    from nnlab.run_record import RunRecord

    jobs = []
    for path in sorted(Path(sweep_dir).rglob("metrics.json")):
        try:
            fresh = path.stat().st_mtime >= since
        except OSError:
            continue
        record = RunRecord.read(path.parent) if fresh else None
        if record is not None:
            jobs.append((path.parent, record))
    return jobs


class SweepSummary(Callback):
    """Prints which jobs of the sweep failed (with their error) and exits with 1 if any did."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times may be coarser than time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # a job killed outright (timeout, memory) still says 'running'
        from nnlab.runs import clean, live_status

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = [
            (d, {**r, "status": live_status(r)}) for d, r in sweep_jobs(sweep_dir, self.started)
        ]
        failed = [(d, r) for d, r in jobs if r.get("status") != "finished"]
        jobs_word = "job" if len(jobs) == 1 else "jobs"
        if not failed:
            print(
                f"nnlab: sweep finished: {len(jobs)} {jobs_word} in {sweep_dir}. "
                f"Compare them with `nnlab runs {sweep_dir}`."
            )
            return
        lines = [
            f"nnlab: sweep finished with {len(failed)} of {len(jobs)} {jobs_word} not finished "
            f"(see each job's train.log; compare with `nnlab runs {sweep_dir}`):"
        ]
        for job_dir, record in failed:
            name = job_dir.relative_to(sweep_dir) if job_dir != sweep_dir else job_dir.name
            error = clean(record.get("error") or "")
            lines.append(f"  {clean(name)}: {record.get('status')}: {error}".rstrip(": "))
        print("\n".join(lines), file=sys.stderr)
        # Hydra's callbacks turn an Exception into a warning; SystemExit ends the sweep
        raise SystemExit(1)
