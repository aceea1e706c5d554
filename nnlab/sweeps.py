"""The end of a sweep (`nnlab train -m ...`): which jobs failed, and a non-zero exit if any did.

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
from omegaconf import DictConfig


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
