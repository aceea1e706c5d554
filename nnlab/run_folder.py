"""Run folders: what they hold, who owns one, and `nnlab train resume=` as Hydra arguments.

Torch-free, so `nnlab train --help`, `--cfg job` and every argument mistake answer at once.

- `RunLock`: one process owns a run folder at a time (train, resume, eval's write); the second gets
  a paragraph naming the holder. An flock on `<run>/.nnlab.lock`: the kernel drops it when the
  holder dies, even by kill -9, so a lock is never stale.
- `prepare_argv`: `nnlab train` arguments -> Hydra's. A new run must go into a new (or empty)
  folder; `resume=RUN` composes the packaged config with the run's recorded overrides (checked by
  nnlab.trust) and the user's new ones, in the run's own folder, from its checkpoints/last.ckpt.
- `pick_checkpoint`: the one rule from a run folder to its checkpoint (best, else last).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from nnlab.errors import CheckpointError, ConfigError, StorageError

LAST = "last.ckpt"
RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_OVERRIDES = Path(".hydra") / "overrides.yaml"
LOCK = ".nnlab.lock"
# a resume continues the run exactly: these come from last.ckpt (optimiser state, RNG states)
FIXED_ON_RESUME = ("model.optimizer", "model.d_optimizer", "model.scheduler", "seed")
# what Lightning's DDP launcher appends when it re-runs `nnlab train` for ranks > 0
DDP_CHILD = "hydra.job.name=train_ddp_process_"


@cache
def config_groups() -> tuple[str, ...]:
    """The config groups: the folders of the packaged configs (nnlab/configs -> configs/)."""
    from importlib.resources import files

    root = files("nnlab.configs")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"))


def group_options(group: str) -> list[str]:
    from importlib.resources import files

    folder = files("nnlab.configs").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


# -- what a run folder holds ----------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_CONFIG).is_file()


def run_dir_of(ckpt: str | Path) -> Path | None:
    """The run folder a checkpoint lives in (<run>/checkpoints/x.ckpt), if any."""
    ckpt = Path(ckpt).resolve()
    return next((p for p in (ckpt.parent.parent, ckpt.parent) if is_run_dir(p)), None)


def pick_checkpoint(run: Path, which: str = "best") -> Path:
    """A run folder (or a folder of .ckpt files) -> its checkpoint: the newest best*.ckpt for
    which=best, else (or for which=last) last.ckpt."""
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    if which == "best":
        best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
    if (folder / LAST).is_file():
        return folder / LAST
    raise CheckpointError(
        f"{run} holds no checkpoint (looked for {'best*.ckpt and ' if which == 'best' else ''}"
        f"{LAST} in {folder}): the run stopped before its first checkpoint, or ran with "
        "callbacks=none. Pass a run folder that holds checkpoints/, or a .ckpt file."
    )


def resume_command(run_dir: str | Path) -> str:
    return f"nnlab train resume={shlex.quote(str(Path(run_dir).resolve()))}"


def interrupted(run_dir: str | Path) -> str | None:
    """Tell the user how to continue an interrupted run; return the resume command (None: nothing
    to resume)."""
    last = Path(run_dir) / "checkpoints" / LAST
    command = resume_command(run_dir) if last.is_file() else None
    text = (
        f"Saved {last}. Resume with:\n  {command}"
        if command
        else "No checkpoint was written yet; start the run again."
    )
    with contextlib.suppress(OSError):  # a closed stderr must not hide the record
        print(f"\nnnlab: interrupted. {text}", file=sys.stderr, flush=True)
    return command


def remove_stale_temporaries(run_dir: Path) -> None:
    """Partial files of a writer that died (kill -9, full disk): only called by the lock's
    holder."""
    for pattern in ("checkpoints/*.tmp*", "metrics.json.tmp*"):
        for path in run_dir.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


# -- can we write there? -----------------------------------------------------------------------
def check_writable(folder: str | Path, what: str) -> None:
    """A ConfigError unless `folder` exists as a writable directory or can be created there. The
    test
    is a real write (a temporary file in the nearest existing folder): permission bits say nothing
    for root, nor for read-only mounts, /proc or a full disk."""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"Cannot create the {what} {folder}: {probe} is a file, not a folder. Choose another "
            "place, e.g. hydra.run.dir=outputs/my_run, or run nnlab in a folder you can write to."
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".nnlab-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror
        raise ConfigError(
            f"Cannot create the {what} {folder}: writing into {probe} failed ({reason}). Choose "
            "another place, e.g. hydra.run.dir=/tmp/my_run, or run nnlab in a folder you can "
            "write to."
        ) from None


def check_new_folder(folder: str | Path, key: str) -> None:
    """A new run goes into a new or empty folder: two runs in one folder mix their events and
    checkpoints, and the second tests the first one's best checkpoint."""
    path = Path(folder).expanduser()
    try:
        taken = path.is_dir() and any(p.name != LOCK for p in path.iterdir())
    except OSError:
        taken = False  # check_writable says why
    if taken:
        raise ConfigError(
            f"{key}={folder} already holds files (another run?): nnlab writes every run into a new "
            f"folder, so that two runs never mix their checkpoints and events. To continue the run "
            f"in it, use `nnlab train resume={folder}`; otherwise choose a new folder, or leave "
            f"{key} out (nnlab names one after the model, the dataset and the time)."
        )


# -- one owner per run folder ----------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder for as long as the `with` block runs.

    The holder writes its pid, host, command and start time into the lock file, so the second
    process can say who has the folder. flock is released by the kernel when the holder exits or
    is killed, and the file is never deleted (deleting it would let two processes lock two
    different files). Re-entrant within one process: `nnlab train` takes the lock of an explicit
    run folder before Hydra writes into it, and the run takes it again."""

    _held: dict[Path, int] = {}  # folder -> descriptor, in this process

    def __init__(self, run_dir: str | Path, command: str):
        self.folder = Path(run_dir).expanduser().absolute()
        self.path = self.folder / LOCK
        self.command = command
        self.owner = False

    def acquire(self) -> RunLock:
        import fcntl

        if self.folder in RunLock._held:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise StorageError(
                f"Cannot lock the run folder {self.folder} ({err.strerror}): nnlab needs to write "
                "into it. Check that it is on a writable disk with free space, or choose another."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            raise ConfigError(
                f"The run folder {self.folder} is in use by another nnlab process ({holder}). One "
                "process owns a run folder at a time: wait for it to end (`nnlab runs` shows its "
                "status), stop it (Ctrl-C saves last.ckpt), or use another folder."
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with contextlib.suppress(OSError):  # the lock holds even if the note cannot be written
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        RunLock._held[self.folder] = fd
        self.owner = True
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            return (
                f"pid {int(info['pid'])} on {str(info['host'])[:64]}, "
                f"`{str(info['command'])[:40]}` since {str(info['since'])[:19]}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            return "pid unknown"

    def release(self) -> None:
        if self.owner:
            os.close(RunLock._held.pop(self.folder))  # the last descriptor: the flock is gone
            self.owner = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_run_folder(argv: list[str]) -> RunLock | None:
    """`nnlab train` with an explicit hydra.run.dir (resume= sets one): lock that folder before
    Hydra writes into it, and refuse a folder that holds another run unless it is resumed. The
    lock stays with this process until it exits."""
    args = argv[1:]
    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help") for a in args) or any(
        a.startswith(("--cfg", DDP_CHILD)) for a in args
    ):
        return None
    folders = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if not folders:
        return None
    folder = folders[-1].strip("'\"").replace("\\'", "'")
    lock = RunLock(folder, "nnlab train").acquire()
    if not any(a.startswith("resume=") for a in args):
        try:
            check_new_folder(folder, "hydra.run.dir")
        except ConfigError:
            lock.release()
            raise
    return lock


# -- `nnlab train` arguments -> Hydra's ------------------------------------------------------------
def _hydra_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def read_recorded_overrides(run: Path) -> list[str]:
    """The overrides a run was started with (.hydra/overrides.yaml) and those of each earlier
    resume (metrics.json), checked by nnlab.trust: plain key=value data, never code."""
    import yaml

    from nnlab.trust import bounded_text, sanitize_overrides

    try:
        original = yaml.safe_load(bounded_text(run / RUN_OVERRIDES)) or []
    except FileNotFoundError:
        original = []
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CheckpointError(
            f"{run / RUN_OVERRIDES} cannot be read ({type(err).__name__}): the run folder is "
            "damaged. Start a new run, or restore .hydra/ from a copy of the run."
        ) from None
    try:
        record = json.loads(bounded_text(run / "metrics.json"))
    except (OSError, ValueError):
        record = {}
    later = []
    for entry in record.get("resumes") or [] if isinstance(record, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("overrides"), list):
            later += entry["overrides"]
    overrides = sanitize_overrides(original, f"{run / RUN_OVERRIDES}") + sanitize_overrides(
        later, f"the resumes recorded in {run / 'metrics.json'}"
    )
    return [o for o in overrides if _key(o) not in ("ckpt_path", "resume")]


def prepare_argv(argv: list[str]) -> list[str]:
    """`nnlab train` arguments -> Hydra's: checks the run folder of a new run, and turns
    resume=<run dir> (or ckpt_path=last inside a run folder) into a composition of the packaged
    config, the run's recorded overrides and the new ones, in the run's folder, from last.ckpt."""
    args = argv[1:]
    if any(a in ("--help", "-h", "--hydra-help") for a in args):
        return argv
    shown = any(a.startswith("--cfg") or a == "-c" for a in args)  # resume=RUN --cfg job: the run's
    if shown and not any(a.startswith("resume=") for a in args):
        return argv
    if any(a.startswith(DDP_CHILD) for a in args):
        return argv  # Lightning's extra DDP process: rank 0 prepared these arguments already
    folder = _resume_target(args)
    sweep = any(a in ("-m", "--multirun") for a in args)
    if folder is None:
        _check_new_run(args, sweep)
        return argv
    run = _resume_folder(folder)
    rest = [
        a for a in args if not a.startswith(("resume=", "hydra.run.dir=")) and a != "ckpt_path=last"
    ]
    _check_resume_overrides(rest, sweep)
    if not shown:
        check_writable(run, "run folder")
        _note_finished(run, rest)
    return _resume_argv(argv[0], run, rest)


def _resume_target(args: list[str]) -> str | None:
    """The run folder to resume: the last resume= (null/None/empty: none), else "." for
    ckpt_path=last inside a run folder; None for a new run."""
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    folder = resume[-1] if resume else None
    if folder in ("null", "None", ""):
        folder = None
    if folder is None and "ckpt_path=last" in args and is_run_dir(Path.cwd()):
        folder = "."
    return folder


def _check_new_run(args: list[str], sweep: bool) -> None:
    """A new run (or sweep) can write its folder: hydra.run.dir / hydra.sweep.dir if given (a
    sweep's must be new), else outputs/."""
    for arg in args:
        key, _, value = arg.partition("=")
        value = value.strip("'\"")
        if key == ("hydra.sweep.dir" if sweep else "hydra.run.dir"):
            check_writable(value, "sweep folder" if sweep else "run folder")
            if sweep:
                check_new_folder(value, key)
    if not any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        check_writable(Path.cwd() / "outputs", "run folder")


def _check_resume_overrides(rest: list[str], sweep: bool) -> None:
    """A resume is one run, with its own config groups, optimiser, scheduler and seeds."""
    if sweep:
        raise ConfigError(
            "resume= continues one run; it cannot be combined with -m (a sweep). Drop -m."
        )
    groups = [a for a in rest if _key(a) in config_groups() and "=" in a]
    if groups:
        raise ConfigError(
            f"resume= continues the run with its own config, so {' '.join(groups)} cannot change. "
            "Override plain keys instead (e.g. trainer.max_epochs=30 to train longer), or start a "
            "new run without resume=."
        )
    fixed = [a for a in rest if _key(a).startswith(FIXED_ON_RESUME)]
    if fixed:
        raise ConfigError(
            f"resume= continues the run exactly, with the optimiser, scheduler and random states "
            f"saved in its last.ckpt, so {' '.join(fixed)} would be ignored. Resume without it; to "
            "train with another learning rate or seed, start a new run (ckpt_path=<a .ckpt> starts "
            "from a checkpoint's weights)."
        )


def _resume_argv(prog: str, run: Path, rest: list[str]) -> list[str]:
    """Hydra's arguments for the resume: the run's recorded overrides, the new ones (which win),
    the run's folder and its last.ckpt, then the flags."""
    recorded = read_recorded_overrides(run)
    new_keys = {_key(a) for a in rest}
    recorded = [o for o in recorded if _key(o) not in new_keys]  # the new value wins
    flags = [a for a in rest if a.startswith("-") or "=" not in a]  # --cfg job, -v: at the end
    return [
        prog,
        *recorded,
        *[a for a in rest if a not in flags],
        f"hydra.run.dir={_hydra_quote(str(run))}",
        "hydra.output_subdir=null",  # .hydra/ keeps the run's original config and overrides
        "hydra.mode=RUN",  # hparams_search=... switches to a sweep; a resume is one run
        f"ckpt_path={_hydra_quote(str(run / 'checkpoints' / LAST))}",
        f"resume={_hydra_quote(str(run))}",
        *flags,
    ]


def _note_finished(run: Path, new: list[str]) -> None:
    """Resuming a run that finished all its epochs only tests it again: say so at once, and how
    to train longer."""
    from nnlab.run_record import RunRecord

    record = RunRecord.read(run) or {}
    if record.get("status") != "finished" or any(
        _key(a) in ("trainer.max_epochs", "trainer.max_steps") for a in new
    ):
        return
    epochs = record.get("epochs") if isinstance(record.get("epochs"), int) else None
    more = f"trainer.max_epochs={2 * epochs}" if epochs else "trainer.max_epochs=N"
    done = f" all its {epochs} epochs" if epochs and epochs > 1 else " its epoch" if epochs else ""
    print(
        f"nnlab: note: this run finished{done}, so resuming it only tests it again. To train "
        f"longer:\n  nnlab train resume={shlex.quote(str(run))} {more}",
        file=sys.stderr,
    )


def _resume_folder(folder: str) -> Path:
    run = Path(folder).expanduser().resolve()
    if not run.is_dir() or not is_run_dir(run):
        why = (
            "does not exist"
            if not run.exists()
            else ("is not a folder" if not run.is_dir() else "has no .hydra/config.yaml")
        )
        raise CheckpointError(
            f"resume={folder} is not an nnlab run folder: {run} {why}. Pass the folder of an "
            "earlier run, e.g. resume=outputs/ae/fashion_mnist/2026-01-01_12-00-00-000000 (the "
            "one holding .hydra/ and checkpoints/)."
        )
    if not (run / "checkpoints" / LAST).is_file():
        raise CheckpointError(
            f"The run {run} has no checkpoints/{LAST} to resume from: it stopped before its first "
            "checkpoint, or ran with callbacks=none. Start it again without resume= "
            f"(callbacks.checkpoint.every_n_steps=N writes {LAST} every N steps)."
        )
    return run
