"""What a run tells its user: a quiet console, per-epoch lines in train.log, the end-of-run summary,
and the HParams summary TensorBoard compares runs with.

- `quiet_lightning`: Lightning's console lines that are not news (GPU/TPU availability, "fit
  stopped", checkpoint restoring, adverts, known deprecation warnings) are dropped unless the run
  is verbose (`nnlab train -v` or verbose=true); its own warnings stay.
- `EpochLog`: one line per epoch (the epoch's train/ and val/ scalars) into train.log; on the
  console too when the console is not a terminal (a log file: no progress bar to redraw).
- `summary_lines`: the key metric next to its baseline, the best epoch, wall time and the commands
  to go on with (sample, eval, tensorboard).
- `write_hparams`: the run's hyper-parameters as a session of TensorBoard's HParams tab. Only the
  session is written, no "experiment": TensorBoard then builds the table from every run under its
  logdir (all hyper-parameters, the ones that differ first and ticked, every family's metrics)
  instead of one arbitrary run's.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("nnlab")
epochs_log = logging.getLogger("nnlab.epochs")  # train.log only, not the console

# Lightning's loggers whose INFO lines are dropped in quiet mode
LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
# warnings that are about a library's internals, not the run (quiet mode)
QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's _pytree on torch 2.14
    r"Checkpoint directory .* exists and is not empty",  # a resume writes into its own folder
    r".*does not have many workers which may be a bottleneck",  # nnlab's data need none
)


class _Quiet(logging.Filter):
    """Drops Lightning's adverts always, and its INFO lines unless verbose."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("💡 Tip"):  # "try installing litlogger": an advert
            return False
        return self.verbose or record.levelno > logging.INFO


def quiet_lightning(verbose: bool = False) -> None:
    """Lightning's console lines that are not news go (see the module docstring); verbose=True
    keeps everything but the adverts."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Quiet)]:
            logger.removeFilter(old)
        logger.addFilter(_Quiet(verbose))
    if not verbose:
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def file_only(logger: logging.Logger = epochs_log) -> None:
    """Send `logger`'s records to the root's file handlers (train.log) and nowhere else."""
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            logger.addHandler(handler)


def _scalar(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def _epoch_callback():
    import pytorch_lightning as pl

    class EpochLog(pl.Callback):
        """One line per training epoch in train.log: epoch, its train/ and val/ scalars."""

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero or not (epochs_log.handlers or epochs_log.propagate):
                return
            shown = []
            for key, value in sorted(trainer.callback_metrics.items()):
                number = _scalar(value) if getattr(value, "numel", lambda: 1)() == 1 else None
                if (
                    number is not None
                    and key.startswith(("train/", "val/"))
                    and key.count("/") == 1
                ):
                    shown.append(f"{key} {number:.5g}")
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            epochs_log.info("epoch %d/%s  %s", trainer.current_epoch + 1, total, "  ".join(shown))

    return EpochLog()


def epoch_log(console: bool = False):
    """The per-epoch callback, its lines in train.log (and on the console when there is no
    progress bar)."""
    file_only()
    if console:
        epochs_log.propagate = True
        epochs_log.handlers.clear()
    return _epoch_callback()


def model_line(model) -> str:
    """'ae: 218,576 parameters (encoder 201,248, decoder 17,328)': the model in one line."""
    total = sum(p.numel() for p in model.parameters())
    parts = [
        (name, sum(p.numel() for p in child.parameters())) for name, child in model.named_children()
    ]
    parts = [f"{name} {n:,}" for name, n in parts if n]
    detail = f" ({', '.join(parts)})" if len(parts) > 1 else ""
    return f"{model.hparams.get('name', type(model).__name__)}: {total:,} parameters{detail}"


def shown_path(path: str | Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it, quoted."""
    path = Path(path).absolute()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def _best_epoch(best: str | None) -> int | None:
    found = re.search(r"epoch[=_-]?(\d+)", Path(best).name) if best else None
    return int(found[1]) if found else None


def summary_lines(
    record: dict[str, Any],
    run_dir: Path,
    monitor: str | None,
    best_score: float | None,
    best_checkpoint: str | None,
    loggers: list[str],
    retested: bool = False,
) -> list[str]:
    """The end of a run in a few lines: what ran and how long, the key metric next to its
    baseline, the best epoch, and the commands to go on with."""
    epochs = record.get("epochs")
    lines = [_finished_line(record)]
    lines += _key_metric_lines(record.get("metrics") or {})
    epoch = _best_epoch(best_checkpoint)
    if monitor and best_score is not None and epoch is not None:
        lines.append(f"  best {monitor} {best_score:.4g} at epoch {epoch + 1} (tested)")
    if retested:
        lines += [
            "  the run had finished all its epochs: this resume only tested it again; to train",
            f"  longer: nnlab train resume={shown_path(run_dir)} trainer.max_epochs="
            f"{(epochs or 0) * 2 or 10}",
        ]
    return lines + _next_lines(run_dir, loggers)


def _finished_line(record: dict[str, Any]) -> str:
    """'nnlab: vae on fashion_mnist finished in 2m13s (10 epochs)'."""
    from nnlab.runs import _wall

    epochs = record.get("epochs")
    wall = record.get("wall_time_s")
    head = f"nnlab: {record.get('model')} on {record.get('dataset')} finished"
    if isinstance(wall, (int, float)):
        head += f" in {_wall(wall)}"
    if isinstance(epochs, int):
        head += f" ({epochs} epoch{'s' if epochs != 1 else ''})"
    return head


def _key_metric_lines(metrics: dict[str, Any]) -> list[str]:
    """The family's key metric next to its baseline (none when the run has no key metric)."""
    from nnlab.runs import baseline_of, key_metric

    key = key_metric(metrics)
    if not key:
        return []
    base = baseline_of(key, metrics)
    text = f"  {key} {metrics[key]:.4g}"
    if base:
        text += f"   baseline {base} {metrics[base]:.4g}"
    return [text]


def _next_lines(run_dir: Path, loggers: list[str]) -> list[str]:
    """The run folder, and the commands to go on with: sample, eval, TensorBoard, the CSV."""
    where = shown_path(run_dir)
    nexts = [f"nnlab sample {where} out=samples.png", f"nnlab eval {where}"]
    if "tensorboard" in loggers:
        nexts.append(f"tensorboard --logdir {shown_path(run_dir.parent)}")
    if "csv" in loggers:
        nexts.append(f"the scalars: {shown_path(run_dir / 'csv' / 'metrics.csv')}")
    return [
        f"  run folder  {where}",
        f"  next        {nexts[0]}",
        *[f"              {line}" for line in nexts[1:]],
    ]


def write_hparams(trainer, params: dict, metrics: dict) -> None:
    """The run as a session of TensorBoard's HParams tab (see the module docstring): its
    hyper-parameters; the metrics are its scalars (TensorBoard reads their last values)."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    from nnlab.lightning_compat import tensorboard_file_writer

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            writer = tensorboard_file_writer(logger)
            scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
            _experiment, session_start, session_end = hparams(params, scalars)
            writer.add_summary(session_start)
            writer.add_summary(session_end)
            logger.experiment.flush()
