"""`nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=3] [interpolate=true]`

Loads a trained model (as `nnlab eval` does) and writes the PNG grid its `sample_grid(n, label,
interpolate)` returns: reconstructions for the autoencoders, prior samples or interpolations for the
vae, generator samples (a class or a class grid) for the gans, an errors grid for the classifiers.
"""

from __future__ import annotations

from pathlib import Path

from nnlab.errors import ConfigError, run_command
from nnlab.evaluate import _int_option, parse_args

USAGE = """\
usage: nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=K] [interpolate=true] [seed=0]

Write a PNG grid from a trained model: RUN_OR_CKPT is a run folder or a .ckpt file.

  n=64               how many images
  out=samples.png    the PNG to write (relative to the current directory)
  label=K            models with classes (cgan): samples of class K; default: one row per class
  interpolate=true   autoencoders, vae: decoded straight lines between two test codes
  seed=0             the random seed of the samples
  checkpoint=best    or last: which checkpoint of a run folder
  dataset=NAME       the dataset to draw test images from (same image shape)
"""

OPTIONS = {
    "n": "64",
    "out": "samples.png",
    "label": "",
    "interpolate": "false",
    "seed": "0",
    "checkpoint": "best",
}


def sample(argv: list[str]) -> Path:
    target, opts, overrides = parse_args(argv, USAGE, OPTIONS)
    n = _int_option(opts["n"], "n")
    seed = _int_option(opts["seed"], "seed", minimum=0)
    if opts["interpolate"].lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(
            f"interpolate={opts['interpolate']!r} is not valid: use interpolate=true or interpolate=false."
        )
    interpolate = opts["interpolate"].lower() in ("true", "1", "yes")
    out = Path(opts["out"]).expanduser()
    if opts["checkpoint"] not in ("best", "last"):
        raise ConfigError(
            f"checkpoint={opts['checkpoint']!r} is not valid: use checkpoint=best or checkpoint=last."
        )
    from nnlab.checkpoints import check_writable

    check_writable(out.parent if str(out.parent) else Path.cwd(), "folder for the PNG")

    import pytorch_lightning as pl
    import torch
    from torchvision.utils import save_image

    from nnlab.checkpoints import attach, load_for_inference

    cfg, model, datamodule, ckpt_path, _ = load_for_inference(
        target, overrides, which=opts["checkpoint"]
    )
    name = getattr(model, "hparams", {}).get("name", type(model).__name__)
    label = None
    if opts["label"] != "":
        label = _int_option(opts["label"], "label", minimum=0)
        if label >= datamodule.num_classes:
            raise ConfigError(
                f"label={label} is out of range: {datamodule.name} has classes 0..{datamodule.num_classes - 1}."
            )
    attach(model, datamodule)
    pl.seed_everything(seed, verbose=False)
    try:
        with torch.no_grad():
            image = model.sample_grid(n=n, label=label, interpolate=interpolate)
    except NotImplementedError:  # the model's family draws no samples (NNLabModule's default)
        raise ConfigError(
            f"Model '{name}' ({type(model).__name__}) cannot draw samples: its family has no "
            "sample_grid. nnlab sample works for autoencoders, vae, gans, rbm and classifiers."
        ) from None
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ConfigError(
            f"Model '{name}'.sample_grid returned {type(image).__name__}, not one (3, H, W) image."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(image.detach().float().clamp(0, 1).cpu(), str(out))
    print(f"nnlab sample: {out} ({image.shape[2]}x{image.shape[1]} px) from {ckpt_path}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_command(sample, argv)


if __name__ == "__main__":
    raise SystemExit(main())
