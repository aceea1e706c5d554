"""`nnlab eval RUN_OR_CKPT [dataset=NAME] [checkpoint=best|last] [key=value ...]`

Rebuilds the model from the run's saved config (.hydra/config.yaml) or, for a bare .ckpt, from the
checkpoint's hyper-parameters; runs the test stage; prints the metrics; writes them into the run's
metrics.json under "eval" (keyed by dataset). Works from any working directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nnlab.errors import ConfigError, run_command

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
                f"'{arg}' is not an option: options are key=value ({', '.join(options) or 'none'}, "
                "dataset=NAME or dataset.KEY=VALUE). Run with --help for usage."
            )
        key, value = arg.split("=", 1)
        if key in own:
            own[key] = value
        elif key == "dataset" or key.startswith("dataset."):
            overrides[key] = value
        else:
            raise ConfigError(
                f"Unknown option '{key}'. The options are: {', '.join(list(options) + ['dataset'])}, "
                "dataset.KEY=VALUE. Run with --help for usage."
            )
    return target, own, overrides


def write_eval(run_dir: Path, dataset: str, entry: dict, section: str = "eval") -> None:
    """Add the evaluation to the run's metrics.json under section.dataset, atomically."""
    path = run_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault(section, {})[dataset] = entry
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _int_option(value: str, key: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(
            f"{key}={value!r} is not valid: it must be an integer >= {minimum}. Example: {key}={max(minimum, 8)}"
        )
    return number


def evaluate(argv: list[str]) -> dict[str, float]:
    target, opts, overrides = parse_args(
        argv, USAGE, {"checkpoint": "best", "accelerator": "cpu", "threads": ""}
    )
    if opts["checkpoint"] not in ("best", "last"):
        raise ConfigError(
            f"checkpoint={opts['checkpoint']!r} is not valid: use checkpoint=best or checkpoint=last."
        )
    import pytorch_lightning as pl
    import torch

    from nnlab.analysis import callbacks_for
    from nnlab.checkpoints import load_for_inference
    from nnlab.train import check_device

    if opts["threads"]:
        torch.set_num_threads(_int_option(opts["threads"], "threads"))
    cfg, model, datamodule, ckpt_path, run_dir = load_for_inference(
        target, overrides, which=opts["checkpoint"]
    )
    from omegaconf import OmegaConf

    check_device(OmegaConf.create({"trainer": {"accelerator": opts["accelerator"]}}))
    limit = OmegaConf.select(cfg, "trainer.limit_test_batches")  # as the run's own test stage
    trainer = pl.Trainer(
        accelerator=opts["accelerator"],
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=limit if limit is not None else 1.0,
        callbacks=callbacks_for(cfg),  # the test-time analyses, as in the run's own test stage
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
        write_eval(
            run_dir,
            datamodule.name,
            {
                "checkpoint": str(ckpt_path),
                "metrics": metrics,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        print(f"written to {run_dir / 'metrics.json'} (eval.{datamodule.name})")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_command(evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
