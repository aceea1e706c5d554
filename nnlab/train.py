"""The single entry point: `nnlab train [overrides]` == `python -m nnlab.train [overrides]`.

compose config -> validate -> seed -> datamodule, model, loggers, callbacks, trainer
-> fit -> test -> metrics.json (+ HParams) -> return the metric that sweeps optimise.

Only Hydra and OmegaConf are imported at module level: --help and --cfg job answer without
torch. Everything heavy is imported inside `train()`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nnlab.config_check import validate
from nnlab.errors import ConfigError, DataError, DeviceError, NNLabError, report_and_exit
from nnlab.run_record import RunRecord

log = logging.getLogger("nnlab")

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


def check_device(cfg: DictConfig) -> None:
    import torch

    accel = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"trainer.accelerator={accel} asks for a GPU, but torch sees none (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, CUDA build {torch.version.cuda}). Run on the CPU with "
            "accelerator=cpu, or let nnlab choose with accelerator=auto; on a GPU machine, check `nvidia-smi` "
            "and that the NVIDIA driver matches this torch build."
        )
    if accel == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "trainer.accelerator=mps asks for Apple's GPU, but it is not available. Use accelerator=cpu."
        )
    if not torch.cuda.is_available():
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (fork-safe CUDA probe). With no usable GPU the probe
        # never caches, and every Adam/AdamW step re-probes NVML (~0.1-0.4 ms a step); without CUDA there is
        # no fork to protect, so take torch's plain (cached) check.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


class _NoAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line: an advert, not news about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def check_ddp_sweep(cfg: DictConfig) -> None:
    """DDP inside a local sweep cannot work: Lightning re-launches `nnlab train` with this process's
    arguments (the whole sweep's) for every extra process. Under SLURM, SLURM starts the processes."""
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
            f"trainer.strategy={strategy} cannot run inside a local sweep (-m): Lightning starts each extra "
            "DDP process by re-running the command line, which would start the whole sweep again. Run the "
            "DDP jobs one at a time (without -m), or sweep them on SLURM with hydra/launcher=slurm "
            "hydra.launcher.gpus_per_node=N hydra.launcher.tasks_per_node=N (SLURM starts the processes)."
        )


def _instantiate_group(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(spec) for spec in group.values() if spec is not None and "_target_" in spec]


def _write_hparams(trainer, params: dict, metrics: dict) -> None:
    """The HParams tab: the run's hyper-parameters with its final metrics (read from their scalars)."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            writer = logger.experiment._get_file_writer()
            for summary in hparams(
                params, {k: v for k, v in metrics.items() if isinstance(v, float)}
            ):
                writer.add_summary(summary)
            logger.experiment.flush()


class _SilentRecord(RunRecord):
    """The extra processes of a DDP run (ranks > 0) keep a record but never write it."""

    def write(self) -> None:
        pass


def _rank_zero() -> bool:
    """Rank 0 of a DDP run (Lightning's launcher, torchrun or SLURM tasks set these), or no DDP at all."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def train(cfg: DictConfig, run_dir: Path) -> float | None:
    """Train and test one configuration; return the monitored validation metric."""
    record = (RunRecord if _rank_zero() else _SilentRecord)(
        run_dir,
        {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "run_dir": str(run_dir),
            "overrides": list(_overrides()),
        },
    )
    try:
        validate(cfg)
        check_ddp_sweep(cfg)
        import pytorch_lightning as pl

        lightning_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
        if not any(isinstance(f, _NoAdverts) for f in lightning_log.filters):
            lightning_log.addFilter(_NoAdverts())
        import torch
        from hydra.utils import instantiate

        check_device(cfg)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        if cfg.get("matmul_precision"):
            torch.set_float32_matmul_precision(cfg.matmul_precision)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

        data_dir = str(Path(cfg.dataset.data_dir).expanduser().resolve())
        datamodule = instantiate(cfg.dataset, data_dir=data_dir, seed=cfg.seed)
        datamodule.prepare_data()  # find the data now: a missing dataset fails before training starts
        model = instantiate(cfg.model, _recursive_=False, _convert_="all")
        loggers = _instantiate_group(cfg.get("logger"))
        callbacks = _instantiate_group(cfg.get("callbacks"))
        if not loggers:  # the learning-rate monitor needs a logger; logger=none drops it
            callbacks = [
                c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)
            ]
        from nnlab.lean import QuietProfiler, skip_idle_hooks

        trainer = instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=callbacks,
            enable_checkpointing=any(
                isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks
            ),
            profiler=cfg.trainer.get("profiler") or QuietProfiler(),
        )
        skip_idle_hooks(trainer.callbacks)

        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in ("last", "best", "hpc", "registry"):
            from nnlab.checkpoints import check_fits, load_checkpoint

            check_fits(
                load_checkpoint(ckpt_path), model, ckpt_path
            )  # a clear error before Lightning's
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        monitored = metrics.get(cfg.model.monitor)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("test_after_fit", True):
            trainer.test(
                model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=True,
                weights_only=True,
            )
            metrics.update(
                {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            )
        metrics.update(getattr(model, "extra_metrics", {}) or {})
        _write_hparams(trainer, hparams_of(cfg), metrics)
        record.finish(
            "finished",
            metrics=dict(sorted(metrics.items())),
            epochs=trainer.current_epoch,
            global_step=trainer.global_step,
            best_checkpoint=best or None,
        )
        log.info("Run folder: %s  (tensorboard --logdir %s)", run_dir, run_dir.parent)
        return monitored
    except KeyboardInterrupt:
        from nnlab.checkpoints import interrupted

        record.finish("interrupted", resume=interrupted(run_dir))
        raise
    except SystemExit:  # Lightning answers Ctrl-C with its clean-up and sys.exit(1)
        trainer = locals().get("trainer")
        if trainer is None or not trainer.interrupted:
            raise
        from nnlab.checkpoints import interrupted

        record.finish("interrupted", resume=interrupted(run_dir))
        raise KeyboardInterrupt from None
    except NNLabError as err:
        record.finish("failed", error=str(err).splitlines()[0])
        raise
    except Exception as err:
        record.finish(
            "failed",
            error=f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}",
        )
        raise


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


@hydra.main(version_base="1.3", config_path="pkg://nnlab.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = train(cfg, run_dir)
    except NNLabError as err:
        # missing data or an absent GPU fail every job of a sweep alike: stop the sweep at once
        if not sweeping or isinstance(err, (DataError, DeviceError)):
            report_and_exit(err)
        log.error(
            "%s", err.render()
        )  # a sweep goes on: metrics.json says failed, nnlab.sweeps sums up
        return None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception:
        if not sweeping:
            raise
        log.exception("This job failed; the sweep goes on.")
        return None
    return None if result is None or math.isnan(result) else result


def main() -> float | None:
    """`nnlab train`: resume=<run dir> becomes Hydra arguments first (nnlab/checkpoints.py)."""
    from nnlab.checkpoints import prepare_argv
    from nnlab.config_check import check_group_choices

    try:
        sys.argv = prepare_argv(sys.argv)
        check_group_choices(sys.argv[1:])
    except NNLabError as err:
        report_and_exit(err)
    return _hydra_main()


if __name__ == "__main__":
    sys.exit(0 if main() is None else 0)
