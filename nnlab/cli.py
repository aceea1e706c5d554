"""The `nnlab` command: dispatches sub-commands and imports nothing heavy itself.

nnlab train [overrides]      train (or sweep with -m); Hydra's --help, --cfg job work
nnlab runs [DIR ...]         a table of the runs under DIR (default outputs/) to compare them
nnlab eval RUN_OR_CKPT       test a trained model again
nnlab sample RUN_OR_CKPT     write a PNG grid of samples
nnlab robustness RUN_OR_CKPT attacks, out-of-distribution data, calibration
"""

from __future__ import annotations

import sys

USAGE = """\
usage: nnlab <command> [args]

Train, sweep and compare the classic deep-learning architectures.

commands:
  train [overrides]     train a model; Hydra overrides (model=vae dataset=mnist
                        trainer.max_epochs=5), -m for sweeps, --help for the
                        config groups, --cfg job to print the composed config;
                        resume=RUN_DIR continues a run from its last.ckpt
                        (-v: Lightning's own console lines too)
  runs [DIR ...]        compare runs: a table of every run under DIR (default
                        outputs/) with its status, overrides and final metrics;
                        --sort test/mse, --filter model=vae, --best test/mse,
                        --top 5, --paths, --wide, --json, --csv, --prune-failed
  eval RUN_OR_CKPT      test a trained run (folder or .ckpt) again and print
                        the metrics (dataset=NAME to test on another dataset)
  sample RUN_OR_CKPT    write a PNG grid from a trained model (n=64
                        out=samples.png label=3 interpolate=true scale=2)
  robustness RUN_OR_CKPT  FGSM/PGD accuracy against eps, OOD detection (ood=digits),
                        calibration (ECE, temperature scaling); the vae's OOD likelihood

examples:
  nnlab train                                   # ae on Fashion-MNIST
  nnlab train model.latent_dim=16 accelerator=cpu
  nnlab train -m model.latent_dim=8,16,32       # a sweep
  nnlab train resume=outputs/ae/fashion_mnist/<time>   # continue a run
  nnlab eval outputs/ae/fashion_mnist/<time>
  nnlab sample outputs/ae/fashion_mnist/<time> n=64 out=samples.png
  tensorboard --logdir outputs                  # look at the runs
  nnlab runs --sort test/mse                    # compare them in a table
  nnlab sample $(nnlab runs --best test/mse --paths) out=best.png

From Python: import nnlab; run = nnlab.train("model=vae"); run.sample(16)

Run `nnlab <command> --help` for a command's own help.
"""

COMMANDS = {
    "train": "nnlab.train:main",
    "runs": "nnlab.runs:main",
    "eval": "nnlab.evaluate:main",
    "sample": "nnlab.sample:main",
    "robustness": "nnlab.robustness:main",
}


def _load(target: str):
    module, func = target.split(":")
    mod = __import__(module, fromlist=[func])
    return getattr(mod, func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        from nnlab import __version__

        print(f"nnlab {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"nnlab: unknown command '{command}'. The commands are: {', '.join(COMMANDS)}. "
            "Run `nnlab --help` for usage.",
            file=sys.stderr,
        )
        return 2
    # Hydra reads sys.argv itself; give it the sub-command's arguments only.
    sys.argv = [f"nnlab {command}", *rest]
    # Lightning's DDP launcher re-runs `python -m <__main__'s module> <sys.argv[1:]>` for each extra
    # process: make that the sub-command's module (`python -m nnlab.train ...`), not this console
    # script.
    import importlib.util

    import __main__

    __main__.__spec__ = importlib.util.find_spec(COMMANDS[command].split(":")[0])
    result = _load(COMMANDS[command])()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
