"""Checkpoints you can trust: written atomically, loaded safely, resumed exactly.

- `ResumableCheckpoint`: Lightning's ModelCheckpoint (best by the model's monitor + last.ckpt) that
  writes every file via a temporary file in the same folder and os.replace, so a kill during a write
  never leaves a broken checkpoint; refreshes last.ckpt at every validation (Lightning 2.6 only
  refreshes it when the best improved) and every `every_n_steps` training steps; carries the RNG
  states; turns Ctrl-C into "finish this step, write last.ckpt, stop".
- `load_checkpoint`: torch.load(weights_only=True) (no code runs from a checkpoint) with one clear
  CheckpointError for a file that is missing, not a checkpoint, truncated or carries Python objects.
- `check_fits`: a CheckpointError when a checkpoint belongs to another model.
- `prepare_argv`: `nnlab train resume=<run dir>` -> Hydra arguments that reuse the run's saved config
  and folder (imports no torch, so `nnlab train --help` stays fast).
- `load_for_inference`: model + datamodule of a run folder or .ckpt, for `nnlab eval` / `nnlab sample`.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from nnlab.errors import CheckpointError, ConfigError

LAST = "last.ckpt"
RUN_CONFIG = Path(".hydra") / "config.yaml"
# config groups: a resumed run keeps its model, data and presets; only plain keys may change
GROUPS = (
    "model",
    "dataset",
    "trainer",
    "accelerator",
    "logger",
    "callbacks",
    "experiment",
    "hparams_search",
    "debug",
)


# -- run folders ------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_CONFIG).is_file()


def run_dir_of(ckpt: str | Path) -> Path | None:
    """The run folder a checkpoint lives in (<run>/checkpoints/x.ckpt), if any."""
    ckpt = Path(ckpt).resolve()
    return next((p for p in (ckpt.parent.parent, ckpt.parent) if is_run_dir(p)), None)


def resume_command(run_dir: str | Path) -> str:
    return f"nnlab train resume={shlex.quote(str(Path(run_dir).resolve()))}"


def interrupted(run_dir: str | Path) -> str | None:
    """Tell the user how to continue an interrupted run; return the resume command (None: nothing to resume)."""
    last = Path(run_dir) / "checkpoints" / LAST
    command = resume_command(run_dir) if last.is_file() else None
    print(
        "\nnnlab: interrupted. "
        + (
            f"Saved {last}. Resume with:\n  {command}"
            if command
            else "No checkpoint was written yet; start the run again."
        ),
        file=sys.stderr,
        flush=True,
    )
    return command


def _hydra_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_writable(folder: str | Path, what: str) -> None:
    """A ConfigError unless `folder` exists as a writable directory or can be created."""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"Cannot create the {what} {folder}: {probe} is a file, not a folder. "
            "Choose another place, e.g. hydra.run.dir=outputs/my_run, or run nnlab in a folder you can write to."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"Cannot create the {what} {folder}: {probe} is not writable for this user. "
            "Choose another place, e.g. hydra.run.dir=/tmp/my_run, or run nnlab in a folder you can write to."
        )


def prepare_argv(argv: list[str]) -> list[str]:
    """`nnlab train` arguments -> Hydra's. resume=<run dir> (or ckpt_path=last inside a run folder)
    reuses the run's saved .hydra/config.yaml as the primary config, its folder as hydra.run.dir
    (same checkpoints, same TensorBoard event folder, same metrics.json) and checkpoints/last.ckpt."""
    args = argv[1:]
    if any(
        a in ("--help", "-h", "--hydra-help") or a.startswith("--cfg") or a == "-c" for a in args
    ):
        return argv
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            check_writable(arg.split("=", 1)[1].strip("'\""), "run folder")
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    folder = resume[-1] if resume else None
    if folder in ("null", "None", ""):
        folder = None
    if folder is None and "ckpt_path=last" in args and is_run_dir(Path.cwd()):
        folder = "."
    if folder is None:
        if not any(a.startswith("hydra.run.dir=") for a in args) and not any(
            a in ("-m", "--multirun") for a in args
        ):
            check_writable(Path.cwd() / "outputs", "run folder")
        return argv
    run = Path(folder).expanduser().resolve()
    if not run.is_dir() or not is_run_dir(run):
        why = (
            "does not exist"
            if not run.exists()
            else ("is not a folder" if not run.is_dir() else "has no .hydra/config.yaml")
        )
        raise CheckpointError(
            f"resume={folder} is not an nnlab run folder: {run} {why}. Pass the folder of an earlier run, "
            "e.g. resume=outputs/ae/fashion_mnist/2026-01-01_12-00-00-000000 (the one holding .hydra/ and checkpoints/)."
        )
    last = run / "checkpoints" / LAST
    if not last.is_file():
        raise CheckpointError(
            f"The run {run} has no checkpoints/{LAST} to resume from: it stopped before its first checkpoint, "
            "or ran with callbacks=none. Start it again without resume= (callbacks.checkpoint.every_n_steps=N writes "
            f"{LAST} every N steps)."
        )
    rest = [
        a for a in args if not a.startswith(("resume=", "hydra.run.dir=")) and a != "ckpt_path=last"
    ]
    if any(a in ("-m", "--multirun") for a in rest):
        raise ConfigError(
            "resume= continues one run; it cannot be combined with -m (a sweep). Drop -m."
        )
    groups = [
        a
        for a in rest
        if a.lstrip("+~").split("=", 1)[0] in GROUPS and "." not in a.split("=", 1)[0]
    ]
    if groups:
        raise ConfigError(
            f"resume= continues the run with its own config, so {' '.join(groups)} cannot change. Override plain "
            "keys instead (e.g. trainer.max_epochs=30 to train longer), or start a new run without resume=."
        )
    check_writable(run, "run folder")
    return [
        argv[0],
        "--config-path",
        str(run / ".hydra"),
        "--config-name",
        "config",
        *rest,
        f"hydra.run.dir={_hydra_quote(str(run))}",
        f"ckpt_path={_hydra_quote(str(last))}",
    ]


# -- loading ------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) on the CPU, with one clear CheckpointError for every failure."""
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a .ckpt file written by nnlab train "
            "(look in <run folder>/checkpoints/), or pass the run folder itself."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text or "not an allowed global" in text:
            found = next(
                (
                    line.strip()
                    for line in text.splitlines()
                    if "GLOBAL" in line or "Unsupported global" in line
                ),
                "",
            )
            raise CheckpointError(
                f"Refusing to load {path}: it carries Python objects besides tensors and plain data ({found}). nnlab "
                "loads checkpoints with torch.load(weights_only=True), so a checkpoint can never run code; this file "
                "was not written by nnlab train or was tampered with. Do not load it with weights_only=False "
                "unless you trust its source completely."
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (it could not be unpickled: {text.splitlines()[-1][:200]}). "
            "Pass a .ckpt file written by nnlab train, or a run folder."
        ) from None
    except Exception as err:  # noqa: BLE001 - zip, storage and unpickler errors of a damaged file
        first = f"{type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint at all ({first}). If a run was killed while writing it, use "
            f"another checkpoint of the run (checkpoints/{LAST} is written atomically), or train again."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a training checkpoint (it holds no model state_dict). "
            "Pass a .ckpt file written by nnlab train, or a run folder."
        )
    return ckpt


def check_fits(ckpt: dict[str, Any], model, path: str | Path) -> None:
    """A CheckpointError when the checkpoint was written by another model or another configuration."""
    saved = (ckpt.get("hyper_parameters") or {}).get("name")
    name = getattr(model, "hparams", {}).get("name")
    if saved and name and saved != name:
        raise CheckpointError(
            f"{path} belongs to another model: it was written by model '{saved}', but the config builds model "
            f"'{name}'. Pass a checkpoint of a '{name}' run, or pick model={saved}."
        )
    state, own = ckpt["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"{wrong[0]} has shape {list(state[wrong[0]].shape)} in the checkpoint but {list(own[wrong[0]].shape)} "
            "in the model"
            if wrong
            else f"{len(missing)} weights missing (e.g. {missing[:1]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:1]})"
        )
        raise CheckpointError(
            f"{path} does not fit the model '{name}' built from the config: {detail}. The checkpoint belongs to "
            "another model or another configuration (e.g. latent_dim, hidden_dims or the dataset's image shape); "
            "use the run folder it came from, so its own config is used."
        )


# -- the checkpoint callback --------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _callback_class():
    """ResumableCheckpoint, built on first use so that importing this module needs no Lightning."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class ResumableCheckpoint(ModelCheckpoint):
        """ModelCheckpoint + atomic writes, last.ckpt every `every_n_steps` steps and at every validation,
        RNG states, and a graceful Ctrl-C. The other arguments are ModelCheckpoint's."""

        def __init__(self, *args, every_n_steps: int | None = None, **kwargs):
            kwargs.setdefault(
                "enable_version_counter", False
            )  # one last.ckpt, overwritten, never last-v1.ckpt
            super().__init__(*args, **kwargs)
            self.every_n_steps = int(every_n_steps or 0)
            self._last_writes = 0
            self._last_written_step = -1
            self._rng_to_restore: dict[str, Any] | None = None
            self._stop_requested = False
            self._previous_sigint = None

        # atomic: write next to the target, fsync, rename over it (a rename is atomic within one folder)
        def _save_checkpoint(self, trainer, filepath: str) -> None:
            tmp = f"{filepath}.tmp"
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, filepath)
            trainer.strategy.barrier()
            self._last_global_step_saved = trainer.global_step
            self._last_checkpoint_saved = filepath
            if trainer.is_global_zero:
                from weakref import proxy

                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))

        def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
            super()._save_last_checkpoint(trainer, monitor_candidates)
            if self.save_last:
                self._last_writes += 1
                self._last_written_step = trainer.global_step

        def _write_last(self, trainer) -> None:
            from pytorch_lightning.trainer.states import TrainerFn

            if (
                not self.save_last
                or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking
                or trainer.fast_dev_run
            ):
                return
            keep = (
                self._last_global_step_saved
            )  # a last.ckpt must not stop the best checkpoint of this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = keep

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            due = self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0
            if (due or self._stop_requested) and self._last_written_step != trainer.global_step:
                self._write_last(trainer)
            if self._stop_requested:
                raise KeyboardInterrupt

        def on_validation_end(self, trainer, pl_module) -> None:
            before = self._last_writes
            super().on_validation_end(trainer, pl_module)
            if self._last_writes == before and not self._should_save_on_train_epoch_end(trainer):
                self._write_last(trainer)
            if self._stop_requested and not trainer.sanity_checking:
                raise KeyboardInterrupt

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            before = self._last_writes
            super().on_train_epoch_end(trainer, pl_module)
            if self._last_writes == before and self._should_save_on_train_epoch_end(trainer):
                self._write_last(trainer)

        # RNG: saved with the callback's state, restored right before the next training batch
        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "rng": _rng_state()}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            state_dict = dict(state_dict)
            self._rng_to_restore = state_dict.pop("rng", None)
            super().load_state_dict(state_dict)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self._rng_to_restore is not None:
                _set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None

        # Ctrl-C: the first finishes the current step, writes last.ckpt and stops; a second stops at once
        def _on_sigint(self, signum, frame) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print(
                "\nnnlab: Ctrl-C - finishing this step and saving checkpoints/last.ckpt "
                "(press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

        def on_train_start(self, trainer, pl_module) -> None:
            if trainer.is_global_zero and threading.current_thread() is threading.main_thread():
                self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

        def _restore_sigint(self) -> None:
            if (
                self._previous_sigint is not None
                and threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGINT, self._previous_sigint)
                self._previous_sigint = None

        def on_train_end(self, trainer, pl_module) -> None:
            super().on_train_end(trainer, pl_module)
            self._restore_sigint()

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            super().on_exception(trainer, pl_module, exception)
            if (
                isinstance(exception, KeyboardInterrupt)
                and self._last_written_step != trainer.global_step
            ):
                self._write_last(
                    trainer
                )  # a second Ctrl-C mid-validation: the weights are still consistent
            self._restore_sigint()

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            cls = type(pl_module)
            checkpoint["nnlab"] = {
                "target": f"{cls.__module__}.{cls.__qualname__}",
                "model": pl_module.hparams.get("name"),
                "dataset": getattr(trainer.datamodule, "name", None),
            }

    ResumableCheckpoint.__qualname__ = (
        ResumableCheckpoint.__name__
    )  # also names its state in checkpoints
    ResumableCheckpoint.__module__ = __name__
    return ResumableCheckpoint


def __getattr__(name: str):
    # `_target_: nnlab.checkpoints.ResumableCheckpoint` (Hydra) and `from nnlab.checkpoints import ...`
    if name == "ResumableCheckpoint":
        globals()[name] = _callback_class()
        return globals()[name]
    raise AttributeError(f"module 'nnlab.checkpoints' has no attribute '{name}'")


# -- model + data of a run, for eval and sample ---------------------------------------------------------
def compose_group(group: str, option: str):
    """One config group's option, composed by Hydra (so its defaults list applies)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="nnlab.configs", version_base="1.3"):
            return compose(config_name="train", overrides=[f"{group}={option}"])[group]
    except MissingConfigException:
        from importlib.resources import files

        options = sorted(
            p.name[:-5]
            for p in files("nnlab.configs").joinpath(group).iterdir()
            if p.name.endswith(".yaml")
        )
        raise ConfigError(
            f"{group}={option} is unknown; the options are: {', '.join(options)}."
        ) from None
    finally:
        GlobalHydra.instance().clear()


def _pick_checkpoint(run: Path, which: str) -> Path:
    folder = run / "checkpoints"
    if which == "best":
        best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
    if (folder / LAST).is_file():
        return folder / LAST
    raise CheckpointError(
        f"The run {run} has no checkpoints ({folder} is empty or missing): it stopped before its first "
        "checkpoint, or ran with callbacks=none. Train it again with checkpoints."
    )


def load_for_inference(target: str, overrides: dict[str, str] | None = None, which: str = "best"):
    """RUN_OR_CKPT -> (cfg, model in eval mode with the checkpoint's weights, datamodule, ckpt path, run dir).

    A run folder: the model is rebuilt from its .hydra/config.yaml. A bare .ckpt: from the
    checkpoint's hyper-parameters (plus its run folder's config when it lives in one).
    overrides: dataset=<name> and dotted keys (dataset.batch_size=...)."""
    import yaml
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = dict(overrides or {})
    path = Path(target).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{target} does not exist. Pass a run folder (e.g. outputs/ae/fashion_mnist/<time>) or a .ckpt file."
        )
    if path.is_dir():
        if not is_run_dir(path):
            raise CheckpointError(
                f"{path} is not an nnlab run folder (it has no .hydra/config.yaml). Pass the folder of a run, "
                "or a .ckpt file."
            )
        run, ckpt_path = path.resolve(), _pick_checkpoint(path.resolve(), which)
    else:
        run, ckpt_path = run_dir_of(path), path.resolve()
    ckpt = load_checkpoint(ckpt_path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    meta = ckpt.get("nnlab") or {}

    if run is not None:
        cfg = OmegaConf.load(run / RUN_CONFIG)
        hydra_cfg = run / ".hydra" / "hydra.yaml"
        origin = OmegaConf.load(hydra_cfg).hydra.runtime.cwd if hydra_cfg.is_file() else None
    else:
        name = hp.get("name") or meta.get("model")
        if not name:
            raise CheckpointError(
                f"{ckpt_path} does not say which model wrote it (no hyper-parameters). Pass its run folder."
            )
        cfg = OmegaConf.create(
            {
                "seed": 0,
                "trainer": {"accelerator": "cpu", "precision": "32-true"},
                "model": compose_group("model", name),
                "dataset": compose_group("dataset", meta.get("dataset") or "fashion_mnist"),
            }
        )
        cfg.model = OmegaConf.merge(cfg.model, {k: v for k, v in hp.items() if k != "input_shape"})
        cfg.model.input_shape = list(hp.get("input_shape") or cfg.dataset.shape)
        origin = None
    model_shape = list(OmegaConf.select(cfg, "model.input_shape") or cfg.dataset.shape)
    cfg.model.input_shape = model_shape  # the trained shape, whatever dataset is evaluated
    if "dataset" in overrides:
        cfg.dataset = compose_group("dataset", overrides.pop("dataset"))
    for key, value in overrides.items():
        OmegaConf.update(
            cfg, key, yaml.safe_load(value) if isinstance(value, str) else value, force_add=True
        )
    if list(cfg.dataset.shape) != model_shape:
        raise ConfigError(
            f"The model was trained on images of shape {model_shape}, but dataset '{cfg.dataset.name}' has shape "
            f"{list(cfg.dataset.shape)}. Evaluate it on a dataset of the same shape."
        )

    model_target = str(cfg.model.get("_target_", ""))
    if not model_target.startswith("nnlab.models."):
        raise CheckpointError(
            f"The model's _target_ '{model_target}' is not an nnlab model (nnlab.models.*); refusing to build it."
        )
    data_dir = Path(str(cfg.dataset.data_dir)).expanduser()
    if not data_dir.is_absolute() and origin:
        data_dir = Path(origin) / data_dir  # relative to where the run was started
    datamodule = instantiate(cfg.dataset, data_dir=str(data_dir), seed=cfg.get("seed", 0))
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    check_fits(ckpt, model, ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return cfg, model, datamodule, ckpt_path, run


def attach(model, datamodule, accelerator: str = "cpu"):
    """A bare Trainer that gives the model its datamodule (model.datamodule, model.device) outside fit/test."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer._data_connector.attach_datamodule(model, datamodule=datamodule)
    model.trainer = trainer
    datamodule.prepare_data()
    datamodule.setup("test")
    model.to(trainer.strategy.root_device)
    return trainer
