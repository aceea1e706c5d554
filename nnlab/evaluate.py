"""`nnlab eval RUN_OR_CKPT [dataset=NAME] [checkpoint=best|last] [key=value ...]`

Rebuilds the model from the packaged configs with the run's recorded overrides (or, for a bare
.ckpt, the checkpoint's hyper-parameters) as plain data (nnlab.inference); runs the test stage;
prints the metrics; writes them into the run's metrics.json under "eval" (keyed by dataset),
holding the run folder's lock. Works from any working directory.

`nnlab eval` and `nnlab sample` share their options (checkpoint, accelerator, threads, seed,
dataset) and check them all before torch is imported: a mistake answers at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nnlab.errors import (
    CheckpointError,
    ConfigError,
    DeviceError,
    StorageError,
    check_choice,
    run_command,
)

# the options both commands take, with their defaults
COMMON = {"checkpoint": "best", "accelerator": "cpu", "threads": "", "seed": "0"}
COMMON_HELP = """\
  checkpoint=best|last  which checkpoint of a run folder (default: best)
  accelerator=cpu|gpu   where to run (default: cpu)
  threads=N             torch.set_num_threads (default: torch's)
  seed=0                the random seed (samples, the VAE's importance sampling)
  dataset=NAME          another dataset of the same image shape (e.g. mnist)
  dataset.KEY=VALUE     any dataset key, e.g. dataset.eval_batch_size=256
"""

USAGE = f"""\
usage: nnlab eval RUN_OR_CKPT [dataset=NAME] [checkpoint=best|last] [key=value ...]

Test a trained model again: RUN_OR_CKPT is a run folder (outputs/ae/fashion_mnist/<time>) or a
.ckpt file. The metrics are printed and written into the run's metrics.json under "eval".

{COMMON_HELP}"""


def parse_args(
    argv: list[str], usage: str, options: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """RUN_OR_CKPT, the command's options (its own and COMMON, with defaults) and dataset
    overrides (key=value)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage, end="")
        raise SystemExit(0 if argv else 2)
    options = {**options, **COMMON}
    target, own, overrides = argv[0], dict(options), {}
    for arg in argv[1:]:
        if "=" not in arg:
            raise ConfigError(
                f"'{arg}' is not an option: options are key=value ({', '.join(options)}, "
                "dataset=NAME or dataset.KEY=VALUE). Run with --help for usage."
            )
        key, value = arg.split("=", 1)
        if key in own:
            own[key] = value
        elif key == "dataset" or key.startswith("dataset."):
            overrides[key] = value
        else:
            import difflib

            close = difflib.get_close_matches(key, [*options, "dataset"], n=1)
            hint = f" Did you mean {close[0]}={value}?" if close else ""
            raise ConfigError(
                f"Unknown option '{key}'. The options are: {', '.join([*options, 'dataset'])}, "
                f"dataset.KEY=VALUE.{hint} Run with --help."
            )
    check_choice("checkpoint", own["checkpoint"], ("best", "last"))
    check_choice("accelerator", own["accelerator"], ("cpu", "gpu", "cuda", "auto"))
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


def gpu_absent() -> bool:
    """True when this machine surely has no GPU torch could use: no NVIDIA (or ROCm, or WSL)
    device files. Torch-free, so `accelerator=gpu` on a CPU machine answers at once."""
    devices = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
    return not any(os.path.exists(d) for d in devices)


class Request:
    """A checked `nnlab eval`/`nnlab sample` command line, before torch: the options, the run
    folder (or None for a bare .ckpt), the checkpoint file, and the run's model and dataset
    config (plain data, composed from the packaged configs; None for a bare .ckpt)."""

    def __init__(self, argv: list[str], usage: str, options: dict[str, str]):
        from nnlab.run_folder import is_run_dir, pick_checkpoint, run_dir_of

        self.target, self.opts, self.overrides = parse_args(argv, usage, options)
        self.threads = int_option(self.opts["threads"], "threads") if self.opts["threads"] else 0
        self.seed = int_option(self.opts["seed"], "seed", minimum=0, maximum=2**32 - 1)
        accelerator = self.opts["accelerator"]
        if accelerator in ("gpu", "cuda") and gpu_absent():
            raise DeviceError(
                f"accelerator={accelerator} asks for a GPU, but this machine has none (no "
                "/dev/nvidia* device). Run on the CPU with accelerator=cpu (the default)."
            )
        path = Path(self.target).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"{self.target} does not exist. Pass a run folder (e.g. "
                "outputs/ae/fashion_mnist/<time>) or a .ckpt file."
            )
        if path.is_dir() and not is_run_dir(path):
            raise CheckpointError(
                f"{path} is not an nnlab run folder (it has no .hydra/config.yaml). Pass the "
                "folder of a run, or a .ckpt file."
            )
        self.run = path.resolve() if path.is_dir() else run_dir_of(path)
        self.ckpt = (
            pick_checkpoint(path.resolve(), self.opts["checkpoint"]) if path.is_dir() else path
        )
        self.model = self.dataset = None
        if self.run is not None:  # the run's config, torch-free: its model and dataset
            from nnlab.inference import run_config

            self.model, self.dataset = run_config(self.run, self.overrides)


def evaluate(argv: list[str]) -> dict[str, float]:
    request = Request(argv, USAGE, {})
    import pytorch_lightning as pl
    import torch

    from nnlab.analysis import callbacks_for
    from nnlab.device import check_device
    from nnlab.inference import load_for_inference
    from nnlab.report import quiet_lightning

    quiet_lightning()
    if request.threads:
        torch.set_num_threads(request.threads)
    accelerator = request.opts["accelerator"]
    check_device(accelerator)
    lock = _lock(request.run)
    try:
        cfg, model, datamodule, ckpt_path, run_dir = load_for_inference(
            request.target, request.overrides, which=request.opts["checkpoint"]
        )
        pl.seed_everything(request.seed, verbose=False)
        trainer = _tester(accelerator, cfg, callbacks_for(cfg))
        datamodule.prepare_data()
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(getattr(model, "extra_metrics", {}) or {})
        metrics = dict(sorted(metrics.items()))
        _print_metrics(ckpt_path, datamodule.name, metrics)
        if run_dir is not None:
            _record(run_dir, datamodule.name, ckpt_path, metrics, locked=lock is not None)
    finally:
        if lock is not None:
            lock.release()
    return metrics


def _lock(run):
    """The run's lock (its metrics.json gets the result: one writer at a time), or None for a
    bare .ckpt or a read-only run folder (evaluate, print, and say it was not written)."""
    from nnlab.run_folder import RunLock

    if run is None:
        return None
    try:
        return RunLock(run, "nnlab eval").acquire()
    except StorageError:
        return None


def _tester(accelerator: str, cfg, callbacks):
    """A quiet one-device Trainer that runs the test stage as the run's own did (its
    limit_test_batches, the test-time analyses in `callbacks`)."""
    from nnlab.inference import quiet_trainer

    limit = cfg.get("limit_test_batches")  # as the run's own test stage
    return quiet_trainer(
        accelerator,
        limit_test_batches=limit if limit is not None else 1.0,
        callbacks=callbacks,  # the test-time analyses, as in the run's test stage
    )


def _print_metrics(ckpt_path, dataset: str, metrics: dict[str, float]) -> None:
    width = max([len(k) for k in metrics] + [6])
    print(f"nnlab eval: {ckpt_path} on {dataset} (test split)")
    print(f"  {'metric':<{width}}  value")
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.6g}")


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
    print(f"written to {run_dir / 'metrics.json'} (eval.{dataset}; `nnlab runs` shows it)")


def main(argv: list[str] | None = None) -> int:
    return run_command(evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
