"""The checkpoint callback: written atomically, resumed exactly, movable with its run folder.

`ResumableCheckpoint` is Lightning's ModelCheckpoint (best by the model's monitor + last.ckpt)
that
- writes every file through a temporary file of its own (`<name>.tmp<pid>`) in the same folder,
  fsync and os.replace, so a kill during a write never leaves a broken checkpoint, and two writers
  never rename each other's partial file;
- refreshes last.ckpt at every validation (Lightning 2.6 only refreshes it when the best improved)
  and every `every_n_steps` training steps;
- carries the RNG states (torch, numpy, python, CUDA) and restores them before the next batch;
- stores its paths relative to its folder, so a moved or copied run folder resumes with its own
  best checkpoint and best score;
- turns Ctrl-C into "finish this step, write last.ckpt, stop" (a second Ctrl-C stops at once).

Loading checkpoints (weights only) lives in nnlab.inference; run folders in nnlab.run_folder.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from weakref import proxy

from pytorch_lightning.trainer.states import TrainerFn

from nnlab.lightning_compat import ModelCheckpointHooks

# ModelCheckpoint's state entries that hold paths inside its folder
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


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


def _in_folder(path: Any, folder: str | None) -> Any:
    """A stored checkpoint path (absolute, from an older nnlab, or a bare name) -> the same file
    name in this callback's folder."""
    if not path or not folder:
        return path
    return str(Path(folder) / Path(str(path)).name)


class ResumableCheckpoint(ModelCheckpointHooks):
    """ModelCheckpoint + atomic writes, last.ckpt every `every_n_steps` steps and at every
    validation, RNG states, relative paths and a graceful Ctrl-C. The other arguments are
    ModelCheckpoint's."""

    def __init__(self, *args, every_n_steps: int | None = None, **kwargs):
        kwargs.setdefault("enable_version_counter", False)  # one last.ckpt, never last-v1.ckpt
        super().__init__(*args, **kwargs)
        self.every_n_steps = int(every_n_steps or 0)
        self._last_writes = 0
        self._last_written_step = -1
        self._rng_to_restore: dict[str, Any] | None = None
        self._stop_requested = False
        self._previous_sigint = None

    # atomic: write next to the target, fsync, rename over it (a rename is atomic in one folder)
    def write_file(self, trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp{os.getpid()}"
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, filepath)
        except BaseException:
            if trainer.is_global_zero and os.path.exists(tmp):
                os.unlink(tmp)  # a full disk or a kill: no partial file left behind
            raise
        trainer.strategy.barrier()
        self.mark_saved(trainer, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_last_written(self, trainer) -> None:
        self._last_writes += 1
        self._last_written_step = trainer.global_step

    def _write_last(self, trainer) -> None:
        if (
            not self.save_last
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.fast_dev_run
        ):
            return
        keep = self.last_step_saved  # a last.ckpt must not stop the best checkpoint of this step
        self.write_last(trainer)
        self.last_step_saved = keep

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
        if self._last_writes == before and not self.saves_on_train_epoch_end(trainer):
            self._write_last(trainer)
        if self._stop_requested and not trainer.sanity_checking:
            raise KeyboardInterrupt

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        before = self._last_writes
        super().on_train_epoch_end(trainer, pl_module)
        if self._last_writes == before and self.saves_on_train_epoch_end(trainer):
            self._write_last(trainer)

    # state: RNG states, and paths as file names (the folder is wherever the run is now)
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "rng": _rng_state()}
        for key in PATH_KEYS:
            state[key] = Path(state[key]).name if state.get(key) else state.get(key)
        state["best_k_models"] = {Path(k).name: v for k, v in state["best_k_models"].items()}
        state["dirpath"] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._rng_to_restore = state.pop("rng", None)
        state["dirpath"] = self.dirpath  # the run folder may have moved: its files moved with it
        for key in PATH_KEYS:
            state[key] = _in_folder(state.get(key), self.dirpath)
        state["best_k_models"] = {
            _in_folder(k, self.dirpath): v for k, v in (state.get("best_k_models") or {}).items()
        }
        super().load_state_dict(state)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    # Ctrl-C: the first finishes the current step, writes last.ckpt and stops; a second stops at
    # once
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
        main = threading.current_thread() is threading.main_thread()
        if self._previous_sigint is not None and main:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        second_ctrl_c = isinstance(exception, KeyboardInterrupt)
        if second_ctrl_c and self._last_written_step != trainer.global_step:
            self._write_last(trainer)  # a second Ctrl-C mid-validation: the weights are consistent
        self._restore_sigint()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        cls = type(pl_module)
        checkpoint["nnlab"] = {
            "target": f"{cls.__module__}.{cls.__qualname__}",  # information only, never called
            "model": pl_module.hparams.get("name"),
            "dataset": getattr(trainer.datamodule, "name", None),
        }
