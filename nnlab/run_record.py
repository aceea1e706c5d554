"""metrics.json: each run's status, final metrics, evaluations and resumes, written atomically so a
reader never sees half a file. Status: running -> finished | failed | interrupted.

A resume updates the record in place: the earlier metrics, epochs, evaluations and the original
overrides stay, and `resumes` gains an entry (when, from which step, with which new overrides).
Only the holder of the run folder's lock (nnlab.run_folder.RunLock) writes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from nnlab.errors import StorageError

STAMP = "%Y-%m-%dT%H:%M:%S"


def _now() -> str:
    return time.strftime(STAMP)


class RunRecord:
    """The run's metrics.json. `enabled=False`: the extra processes of a DDP run (ranks > 0) keep
    a record but never write it."""

    def __init__(self, run_dir: str | Path, data: dict[str, Any], earlier_wall: float = 0.0,
                 enabled: bool = True):  # fmt: skip
        self.path = Path(run_dir) / "metrics.json"
        self.data = data
        self.started = time.time()
        self.earlier_wall = earlier_wall  # a resumed run keeps counting its earlier wall time
        self.enabled = enabled

    @classmethod
    def new(cls, run_dir: str | Path, info: dict[str, Any], enabled: bool = True) -> RunRecord:
        data = {
            "status": "running",
            **info,
            "started": _now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics": {},
        }
        record = cls(run_dir, data, enabled=enabled)
        record.write()
        return record

    @classmethod
    def resumed(
        cls, run_dir: str | Path, overrides: list[str], from_step: int, enabled: bool = True
    ) -> RunRecord:
        """The run's record, kept, with a new entry in `resumes`."""
        data = cls.read(run_dir) or {}
        resumes = data.get("resumes") if isinstance(data.get("resumes"), list) else []
        entry = {
            "started": _now(),
            "from_step": from_step,
            "overrides": list(overrides),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        for key in ("error", "resume", "finished"):  # the end of an earlier part
            data.pop(key, None)
        data.update(status="running", host=entry["host"], pid=entry["pid"])
        data["resumes"] = [*resumes, entry]
        wall = data.get("wall_time_s")
        earlier = float(wall) if isinstance(wall, (int, float)) and wall >= 0 else 0.0
        record = cls(run_dir, data, earlier_wall=earlier, enabled=enabled)
        record.write()
        return record

    @staticmethod
    def read(run_dir: str | Path) -> dict[str, Any] | None:
        from nnlab.trust import bounded_text

        try:
            data = json.loads(bounded_text(Path(run_dir) / "metrics.json"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def write(self) -> None:
        if not self.enabled:
            return
        self.data["wall_time_s"] = round(self.earlier_wall + time.time() - self.started, 3)
        write_json(self.path, self.data)

    def finish(self, status: str, **fields: Any) -> None:
        self.data["finished"] = _now()
        if self.data.get("resumes"):
            self.data["resumes"][-1]["status"] = status
        self.update(status=status, **fields)

    @classmethod
    def add_eval(
        cls, run_dir: str | Path, dataset: str, entry: dict[str, Any], section: str = "eval"
    ) -> None:
        """An `nnlab eval` (or `nnlab robustness`) result under <section>.<dataset> (the caller
        holds the run's lock)."""
        data = cls.read(run_dir) or {}
        evals = data.get(section) if isinstance(data.get(section), dict) else {}
        data[section] = {**evals, dataset: entry}
        write_json(Path(run_dir) / "metrics.json", data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a temporary file of this process, then a rename. A full or read-only disk
    becomes a StorageError, and leaves no temporary file behind."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(
            f"Cannot write {path}: {'the disk is full' if full else err.strerror}. "
            + (
                "Free some space (old runs under outputs/, checkpoints) and resume the run."
                if full
                else "Make the run folder writable, or choose another one."
            )
        ) from None
