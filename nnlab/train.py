"""The single entry point: `nnlab train [overrides]` == `python -m nnlab.train [overrides]`.

The recipe of one run (`train`):
    check   validate the config, then check every _target_ against the packaged allowlist
    build   datamodule, model, loggers, callbacks, trainer (from the checked, resolved config)
    fit     and test; return the metric that sweeps optimise
all inside `RunGuard`, which owns the run folder (its lock) and its record (metrics.json):
finished, failed (with the reason), or interrupted (Ctrl-C, SIGTERM) with the resume command.

Only Hydra and OmegaConf are imported at module level: --help and --cfg job answer without
torch. Everything heavy is imported inside `train()`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nnlab.config_check import validate
from nnlab.errors import (
    ConfigError,
    DataError,
    DeviceError,
    NNLabError,
    StorageError,
    report_and_exit,
    unwrap_instantiation,
)
from nnlab.report import summary_lines, write_hparams
from nnlab.run_record import RunRecord
from nnlab.sweeps import job_argv, register_resolver

log = logging.getLogger("nnlab")
register_resolver()  # names a sweep's job folders (configs/hydra/default.yaml)

# the config keys shown in TensorBoard's HParams tab (besides everything under model.)
HPARAM_KEYS = (
    "dataset.name",
    "dataset.batch_size",
    "dataset.val_fraction",
    "trainer.max_epochs",
    "trainer.precision",
    "trainer.accelerator",
    "seed",
)
# the sections of the config that become objects
BUILT = ("model", "dataset", "trainer", "callbacks", "logger")
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if str(k).startswith("_") or k in ("name", "input_shape", "n_log_images"):
                continue
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d if isinstance(d, (int, float, str, bool)) else str(d)
    return out


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The flattened hyper-parameters that matter: the model's, and a few run-level keys."""
    params = _flat(OmegaConf.to_container(cfg.model, resolve=True), "model.")
    params["model"] = cfg.model.name
    for key in HPARAM_KEYS:
        value = OmegaConf.select(cfg, key)
        params[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def check_ddp_sweep(cfg: DictConfig) -> None:
    """DDP inside a local sweep cannot work: Lightning re-launches `nnlab train` with this process's
    arguments (the whole sweep's) for every extra process. Under SLURM, SLURM starts the processes.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    strategy = str(cfg.trainer.get("strategy", ""))
    if "ddp" not in strategy or "spawn" in strategy or cfg.trainer.get("devices") == 1:
        return
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    if hydra_cfg.mode == RunMode.MULTIRUN and "SlurmLauncher" not in launcher:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run inside a local sweep (-m): Lightning starts "
            "each extra DDP process by re-running the command line, which would start the whole "
            "sweep again. Run the DDP jobs one at a time (without -m), or sweep them on SLURM with "
            "hydra/launcher=slurm hydra.launcher.gpus_per_node=N hydra.launcher.tasks_per_node=N "
            "(SLURM starts the processes)."
        )


def _rank_zero() -> bool:
    """Rank 0 of a DDP run (Lightning's launcher, torchrun or SLURM tasks set these), or no DDP."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1][:500] if text else ''}"


class Interrupted(Exception):
    """The run stopped on a signal; `code` is the exit code (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _exit_at_once(signum, frame) -> None:
    os._exit(128 + signum)  # a second Ctrl-C while exiting: no atexit traceback


# -- the run guard: the folder's lock and the run's record -----------------------------------------
class RunGuard:
    """Owns one run folder for the life of a run: its lock, its stale temporary files, and its
    record. On the way out it writes what happened: finished (by `finished()`), failed (the
    reason, as one paragraph for nnlab's own errors), or interrupted (Ctrl-C, SIGTERM, including
    the SystemExit Lightning turns Ctrl-C into) with the resume command.

    A new run's record is written at once; when the run then fails on one of nnlab's errors (a
    config, data, device or checkpoint mistake) before its first training step, the run folder is
    removed again (nothing ran; the paragraph says why), except for the jobs of a sweep, whose
    records the sweep's summary lists. A resume touches the record only in `started()`, after the
    config, the data and the checkpoint passed: a resume that cannot start leaves the run as it
    was."""

    def __init__(self, run_dir: Path, cfg: DictConfig, sweeping: bool = False):
        self.run_dir = run_dir
        self.cfg = cfg
        self.resuming = bool(cfg.get("resume"))
        self.sweeping = sweeping
        self.rank_zero = _rank_zero()
        self.record: RunRecord | None = None
        self.trainer = None
        self.lock = None
        self.remove = False  # a new run that failed before its first step: nothing to keep

    def __enter__(self) -> RunGuard:
        from nnlab.run_folder import RunLock, remove_stale_temporaries

        if self.rank_zero:
            self.lock = RunLock(self.run_dir, "nnlab train").acquire()
            remove_stale_temporaries(self.run_dir)
            if not self.resuming and (self.run_dir / "metrics.json").exists():
                self.lock.release()
                raise ConfigError(
                    f"The run folder {self.run_dir} holds another run (its metrics.json): nnlab "
                    "writes every run into a new folder. Continue that run with "
                    f"`nnlab train resume={self.run_dir}`, or choose another folder."
                )
        if not self.resuming:
            info = {
                "model": self.cfg.model.name,
                "dataset": self.cfg.dataset.name,
                "run_dir": str(self.run_dir),
                "overrides": _overrides(),
            }
            self.record = RunRecord.new(self.run_dir, info, enabled=self.rank_zero)
        return self

    def started(self, trainer, from_step: int) -> None:
        """Everything is built and checked: a resume now updates the record in place."""
        self.trainer = trainer
        if self.resuming:
            from nnlab.run_folder import read_recorded_overrides

            recorded = set(read_recorded_overrides(self.run_dir))
            new = [
                o
                for o in _overrides()
                if o not in recorded and not o.startswith(("ckpt_path=", "resume="))
            ]
            self.record = RunRecord.resumed(
                self.run_dir, new, from_step=from_step, enabled=self.rank_zero
            )

    def finished(self, **fields: Any) -> None:
        self.record.finish("finished", **fields)

    def _end(self, status: str, **fields: Any) -> None:
        if self.record is None:
            return
        try:
            self.record.finish(status, **fields)
        except StorageError as err:  # the disk that failed the run fails its record too
            print(f"nnlab: {err}", file=sys.stderr)

    def __exit__(self, kind, err, tb) -> None:
        try:
            self._exit(err)
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.remove:
                remove_unused_run_folder(self.run_dir)

    def _exit(self, err: BaseException | None) -> None:
        from nnlab.run_folder import interrupted

        if err is None:
            return
        stopped = isinstance(err, KeyboardInterrupt) or (
            isinstance(err, SystemExit) and self.trainer is not None and self.trainer.interrupted
        )
        if stopped:
            sigterm = type(err).__name__ == "SIGTERMException"
            if threading_main():
                signal.signal(signal.SIGINT, _exit_at_once)
            self._end("interrupted", resume=interrupted(self.run_dir))
            raise Interrupted(143 if sigterm else 130) from None
        if isinstance(err, SystemExit):
            return
        mine = unwrap_instantiation(err)
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            mine = StorageError(
                f"Writing the run failed: {err.strerror} ({err.filename or self.run_dir}). "
                + (
                    "The disk is full: free some space and resume the run "
                    f"(nnlab train resume={self.run_dir})."
                    if err.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "Make the run folder writable, or choose another one."
                )
            )
        if isinstance(mine, NNLabError):
            # a config, data or device mistake of a new run, before it trained: the run folder
            # would only say "failed" (the paragraph says why); a sweep's job keeps its record
            self.remove = (
                self.rank_zero
                and not self.resuming
                and not self.sweeping
                and (self.trainer is None or self.trainer.global_step == 0)
            )
            if not self.remove:
                self._end("failed", error=str(mine).splitlines()[0])
            if mine is not err:
                raise mine from None
            return
        self._end("failed", error=_last_line(err.__cause__ or err))


# what a run folder holds before its first training step (Hydra's, nnlab's, the loggers')
BEFORE_TRAINING = {".hydra", "train.log", "metrics.json", ".nnlab.lock", "checkpoints", "csv"}
BEFORE_TRAINING |= {"hparams.yaml"}  # and TensorBoard's events.out.tfevents.* files


def remove_unused_run_folder(run_dir: Path) -> None:
    """Remove a new run's folder that holds nothing but what was written before training (a run
    that failed on a config, data or device mistake), and the empty <model>/<dataset> folders
    above it under ./outputs. A folder with anything else in it stays."""
    import shutil

    try:
        names = {p.name for p in run_dir.iterdir()}
        idle = all(not any(run_dir.joinpath(d).iterdir()) for d in {"checkpoints", "csv"} & names)
    except OSError:
        return
    names = {n for n in names if not n.startswith("events.out.tfevents.")}
    if not names <= BEFORE_TRAINING or not idle:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    outputs = (Path.cwd() / "outputs").resolve()
    parent = run_dir.resolve().parent
    while parent != outputs and outputs in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- the recipe ---------------------------------------------------------------------------------
def check(cfg: DictConfig) -> dict[str, Any]:
    """Validate the values, then resolve the sections that become objects and check them against
    the packaged allowlist (nnlab.trust). Returns those sections as plain data."""
    from nnlab.trust import check_config

    validate(cfg)
    check_ddp_sweep(cfg)
    try:
        config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in BUILT if k in cfg}
    except Exception as err:  # noqa: BLE001 - interpolation errors are config mistakes
        raise ConfigError(f"The config cannot be resolved: {err}") from None
    check_config(config)
    return config


def _specs(group: dict | None) -> list[dict]:
    """The entries of a callbacks/logger group that name a class (null entries are switched off)."""
    return [s for s in (group or {}).values() if isinstance(s, dict) and "_target_" in s]


def _instantiate(spec: dict, **kwargs: Any):
    from hydra.utils import instantiate

    try:
        return instantiate(spec, **kwargs)
    except Exception as err:
        raise unwrap_instantiation(err) from err


def _check_validation_split(trainer) -> None:
    """An empty validation split is a data mistake, not a `finished` run without a best
    checkpoint: said before the first training step (by `build`'s callback)."""
    if trainer.limit_val_batches == 0 or trainer.datamodule is None:
        return
    try:
        n = len(trainer.datamodule.val_dataloader())
    except TypeError:  # a loader without a length
        return
    if n == 0:
        raise DataError(
            f"The validation split of dataset '{trainer.datamodule.name}' is empty (0 batches): "
            "nothing would choose the best checkpoint. Hold out more images "
            "(dataset.val_fraction=0.1) or use a larger dataset; trainer.limit_val_batches=0 "
            "skips validation on purpose."
        )


def build(cfg: DictConfig, config: dict[str, Any], run_dir: Path, extra_callbacks: Sequence):
    """The datamodule (data found now), the model, the loggers, callbacks and the trainer."""
    import pytorch_lightning as pl
    import torch

    from nnlab.device import check_device, prefer_cached_cuda_check
    from nnlab.figures import LearningRates
    from nnlab.lean import QuietProfiler, StepPlan, skip_idle_hooks
    from nnlab.report import epoch_log, model_line, quiet_lightning
    from nnlab.trust import check_optimizer_classes

    verbose = bool(cfg.get("verbose"))
    quiet_lightning(verbose)
    check_optimizer_classes(config["model"])
    trainer_cfg = config["trainer"]
    check_device(trainer_cfg.get("accelerator", "auto"), trainer_cfg.get("precision"))
    prefer_cached_cuda_check()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dataset = config["dataset"]
    data_dir = str(Path(dataset["data_dir"]).expanduser().resolve())
    datamodule = _instantiate(dataset, data_dir=data_dir, seed=cfg.seed)
    datamodule.prepare_data()  # find the data now: a missing dataset fails before training
    model = _instantiate(config["model"], _recursive_=False, _convert_="all")
    loggers = [_instantiate(s) for s in _specs(config.get("logger"))]
    callbacks = [_instantiate(s) for s in _specs(config.get("callbacks"))]
    if not loggers:  # the learning-rate monitor needs a logger; logger=none drops it
        callbacks = [
            c
            for c in callbacks
            if not isinstance(c, (pl.callbacks.LearningRateMonitor, LearningRates))
        ]
    quiet = {} if verbose else {"enable_model_summary": False}  # nnlab's one line instead
    console = sys.stderr.isatty() or verbose
    if not console:  # a log file, a pipe: the epochs' lines instead of a progress bar's redraws
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
        quiet["enable_progress_bar"] = False
    check_data = pl.callbacks.LambdaCallback(on_train_start=lambda t, m: _check_validation_split(t))
    steps = StepPlan(cfg.get("steps_per_execution", 1))
    callbacks += [*extra_callbacks, check_data, steps, epoch_log(console=not console)]
    trainer = _instantiate(
        trainer_cfg,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        profiler=trainer_cfg.get("profiler") or QuietProfiler(),
        **quiet,
    )
    if not verbose and trainer.is_global_zero:
        log.info("%s", model_line(model))
    skip_idle_hooks(trainer.callbacks)
    steps.attach(trainer, model)  # several optimizer steps per Lightning step, or one
    return datamodule, model, trainer


def _scalars(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def fit_and_test(cfg: DictConfig, datamodule, model, trainer) -> tuple[dict, float | None, str]:
    """fit (from cfg.ckpt_path when set), then test the best checkpoint: (metrics, the monitored
    validation metric, the best checkpoint's path)."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt
    if trainer.num_training_batches == 0:
        raise DataError(
            f"Dataset '{datamodule.name}' gave no training batches, so nothing was trained. Check "
            "dataset.n_train / the data files, and that trainer.limit_train_batches is not 0."
        )
    metrics = _scalars(trainer)
    monitored = metrics.get(cfg.model.monitor)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test_after_fit", True):
        trainer.test(
            model,
            datamodule=datamodule,
            ckpt_path=best or None,
            verbose=bool(cfg.get("verbose")),  # quiet: the summary shows the key metrics
            weights_only=True,
        )
        metrics.update(_scalars(trainer))
    metrics.update(getattr(model, "extra_metrics", {}) or {})
    return dict(sorted(metrics.items())), monitored, best


def train(
    cfg: DictConfig, run_dir: Path, callbacks: Sequence = (), sweeping: bool = False
) -> float | None:
    """Train and test one configuration in run_dir; return the monitored validation metric.
    `callbacks`: extra Lightning callbacks (objects), e.g. scripts/bench.py's timers."""
    with RunGuard(run_dir, cfg, sweeping) as guard:
        config = check(cfg)
        datamodule, model, trainer = build(cfg, config, run_dir, callbacks)
        from_step = 0
        if cfg.get("ckpt_path") and str(cfg.ckpt_path) not in ("last", "best", "hpc", "registry"):
            from nnlab.inference import check_fits, load_checkpoint

            ckpt = load_checkpoint(cfg.ckpt_path)  # a clear error before Lightning's
            check_fits(ckpt, model, cfg.ckpt_path)
            from_step = int(ckpt.get("global_step", 0) or 0)
        guard.started(trainer, from_step)
        metrics, monitored, best = fit_and_test(cfg, datamodule, model, trainer)
        write_hparams(trainer, hparams_of(cfg), metrics)
        guard.finished(
            metrics=metrics,
            epochs=trainer.current_epoch,
            global_step=trainer.global_step,
            best_checkpoint=best or None,
        )
        if trainer.is_global_zero:
            checkpoint = trainer.checkpoint_callback
            score = getattr(checkpoint, "best_model_score", None) if checkpoint else None
            lines = summary_lines(
                guard.record.data,
                run_dir,
                cfg.model.get("monitor"),
                float(score) if score is not None else None,
                best,
                [type(lg).__name__.lower().replace("logger", "") for lg in trainer.loggers],
                retested=guard.resuming and trainer.global_step == from_step,
            )
            log.info("%s", "\n".join(lines))
        return monitored


def _job(cfg: DictConfig, callbacks: Sequence) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = train(cfg, run_dir, callbacks, sweeping)
    except NNLabError as err:
        # missing data or an absent GPU fail every job of a sweep alike: stop the sweep at once
        if not sweeping or isinstance(err, (DataError, DeviceError, StorageError)):
            report_and_exit(err)
        log.error("%s", err.render())  # a sweep goes on: metrics.json says failed
        return None
    except Interrupted as stop:
        raise SystemExit(stop.code) from None
    except Exception:
        if not sweeping:
            raise
        log.exception("This job failed; the sweep goes on.")
        return None
    return None if result is None or math.isnan(result) else result


def main(callbacks: Sequence = ()) -> None:
    """`nnlab train`: resume=<run dir> becomes Hydra arguments first (nnlab/run_folder.py); an
    explicit run folder is locked before Hydra writes into it. `callbacks`: extra Lightning
    callbacks for every run (objects; the configs' callbacks are built from the allowlist)."""
    from nnlab.config_check import check_group_choices, check_override_keys
    from nnlab.run_folder import claim_run_folder, prepare_argv
    from nnlab.runs import noise_keys

    if not sys.stderr.isatty():  # Optuna's coloured log lines, in a log file: plain text
        os.environ.setdefault("NO_COLOR", "1")

    try:
        sys.argv = [a for a in sys.argv if a not in ("-v", "--verbose")] + (
            ["verbose=true"] if any(a in ("-v", "--verbose") for a in sys.argv[1:]) else []
        )
        sys.argv = prepare_argv(sys.argv)
        check_group_choices(sys.argv[1:])
        check_override_keys(sys.argv[1:])
        sys.argv = job_argv(sys.argv, [k for k in noise_keys() if k != "hydra."])
        lock = claim_run_folder(sys.argv)
    except NNLabError as err:
        report_and_exit(err)

    @hydra.main(version_base="1.3", config_path="pkg://nnlab.configs", config_name="train")
    def job(cfg: DictConfig) -> float | None:
        return _job(cfg, callbacks)

    job.__module__ = __name__  # Hydra names the job (train.log) after the task's module
    try:
        job()
    finally:
        if lock is not None:
            lock.release()


# nnlab.train(...) from Python: this module is also the API function nnlab.api.train
from nnlab.api import callable_module  # noqa: E402

callable_module(__name__)

if __name__ == "__main__":
    main()
