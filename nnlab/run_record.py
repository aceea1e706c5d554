"""metrics.json: each run's status and final metrics, written atomically so a reader never
sees half a file. Status: running -> finished | failed | interrupted."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any


class RunRecord:
    def __init__(self, run_dir: str | Path, info: dict[str, Any]):
        self.path = Path(run_dir) / "metrics.json"
        self.started = time.time()
        previous = self.read(self.path.parent) or {}
        self.data: dict[str, Any] = {
            "status": "running",
            **info,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics": previous.get("metrics", {}),
        }
        # a resumed run keeps counting its earlier wall time
        self.earlier_wall = float(previous.get("wall_time_s", 0.0)) if previous else 0.0
        self.write()

    @staticmethod
    def read(run_dir: str | Path) -> dict[str, Any] | None:
        try:
            return json.loads((Path(run_dir) / "metrics.json").read_text())
        except (OSError, ValueError):
            return None

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def write(self) -> None:
        self.data["wall_time_s"] = round(self.earlier_wall + time.time() - self.started, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.path)

    def finish(self, status: str, **fields: Any) -> None:
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.update(status=status, **fields)
