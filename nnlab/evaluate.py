"""`nnlab eval RUN_OR_CKPT [dataset=NAME] [checkpoint=best|last] [key=value ...]`

Rebuilds the model from the packaged configs with the run's recorded overrides (or, for a bare
.ckpt, the checkpoint's hyper-parameters) as plain data (nnlab.inference); runs the test stage;
prints the metrics; writes them into the run's metrics.json under "eval" (keyed by dataset),
holding the run folder's lock. Works from any working directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nnlab.errors import ConfigError, StorageError, check_choice, run_command

USAGE = """\
usage: nnlab eval RUN_OR_CKPT [dataset=NAME] [checkpoint=best|last] [threads=N] [key=value ...]

Test a trained model again: RUN_OR_CKPT is a run folder (outputs/ae/fashion_mnist/<time>) or a
.ckpt file. The metrics are printed and written into the run's metrics.json under "eval".

  dataset=NAME          evaluate on another dataset of the same image shape (e.g. mnist)
  checkpoint=best|last  which checkpoint of a run folder (default: best)
  accelerator=cpu|gpu   where to run (default: cpu)
  threads=N             torch.set_num_threads
  key=value             any dataset key, e.g. dataset.eval_batch_size=256
"""


def parse_args(
    argv: list[str], usage: str, options: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """RUN_OR_CKPT, the command's own options (with defaults) and config overrides (key=value)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage, end="")
        raise SystemExit(0 if argv else 2)
    target, own, overrides = argv[0], dict(options), {}
    for arg in argv[1:]:
        if "=" not in arg:
            raise ConfigError(
                f"'{arg}' is not an option: options are key=value ({', '.join(options) or 'none'}"
                ", dataset=NAME or dataset.KEY=VALUE). Run with --help for usage."
            )
        key, value = arg.split("=", 1)
        if key in own:
            own[key] = value
        elif key == "dataset" or key.startswith("dataset."):
            overrides[key] = value
        else:
            raise ConfigError(
                f"Unknown option '{key}'. The options are: "
                f"{', '.join(list(options) + ['dataset'])}, dataset.KEY=VALUE. Run with --help."
            )
    if "checkpoint" in own:
        check_choice("checkpoint", own["checkpoint"], ("best", "last"))
    return target, own, overrides


def int_option(value: str, key: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer command option in [minimum, maximum], or one ConfigError paragraph."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        example = max(minimum, 8) if maximum is None else min(max(minimum, 8), maximum)
        raise ConfigError(
            f"{key}={value!r} is not valid: it must be an integer {bounds}. "
            f"Example: {key}={example}"
        )
    return number


def evaluate(argv: list[str]) -> dict[str, float]:
    target, opts, overrides = parse_args(
        argv, USAGE, {"checkpoint": "best", "accelerator": "cpu", "threads": ""}
    )
    import pytorch_lightning as pl
    import torch

    from nnlab.analysis import callbacks_for
    from nnlab.device import check_device
    from nnlab.inference import load_for_inference
    from nnlab.run_folder import RunLock, is_run_dir, run_dir_of

    if opts["threads"]:
        torch.set_num_threads(int_option(opts["threads"], "threads"))
    check_device(opts["accelerator"])
    lock, path = None, Path(target).expanduser()
    run = path if is_run_dir(path) else run_dir_of(path) if path.is_file() else None
    if run is not None:  # its metrics.json gets the result: one writer at a time
        try:
            lock = RunLock(run, "nnlab eval").acquire()
        except StorageError:
            lock = None  # a read-only run folder: evaluate, print, and say it was not written
    try:
        cfg, model, datamodule, ckpt_path, run_dir = load_for_inference(
            target, overrides, which=opts["checkpoint"]
        )
        limit = cfg.get("limit_test_batches")  # as the run's own test stage
        trainer = pl.Trainer(
            accelerator=opts["accelerator"],
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_test_batches=limit if limit is not None else 1.0,
            callbacks=callbacks_for(cfg),  # the test-time analyses, as in the run's test stage
        )
        datamodule.prepare_data()
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(getattr(model, "extra_metrics", {}) or {})
        metrics = dict(sorted(metrics.items()))

        width = max([len(k) for k in metrics] + [6])
        print(f"nnlab eval: {ckpt_path} on {datamodule.name} (test split)")
        print(f"  {'metric':<{width}}  value")
        for key, value in metrics.items():
            print(f"  {key:<{width}}  {value:.6g}")
        if run_dir is not None:
            _record(run_dir, datamodule.name, ckpt_path, metrics, locked=lock is not None)
    finally:
        if lock is not None:
            lock.release()
    return metrics


def _record(run_dir, dataset: str, ckpt_path, metrics: dict, locked: bool) -> None:
    from nnlab.run_record import RunRecord

    entry = {
        "checkpoint": str(ckpt_path),
        "metrics": metrics,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        if not locked:
            raise StorageError(f"Cannot lock {run_dir}")
        RunRecord.add_eval(run_dir, dataset, entry)
    except StorageError as err:
        print(
            f"nnlab: note: the metrics above were not written into {run_dir / 'metrics.json'} "
            f"({str(err).split(': ', 1)[-1].rstrip('.')}); the run folder is read-only or its "
            "disk is full.",
            file=sys.stderr,
        )
        return
    print(f"written to {run_dir / 'metrics.json'} (eval.{dataset})")


def main(argv: list[str] | None = None) -> int:
    return run_command(evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
