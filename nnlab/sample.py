"""`nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=3] [interpolate=true]`

Loads a trained model (as `nnlab eval` does) and writes the PNG grid its `sample_grid(n, label,
interpolate)` returns: reconstructions for the autoencoders, prior samples or interpolations for the
vae, generator samples (a class or a class grid) for the gans, Gibbs samples or chains for the
RBM, an errors grid for the classifiers.
"""

from __future__ import annotations

from pathlib import Path

from nnlab.errors import ConfigError, check_choice, run_command
from nnlab.evaluate import int_option, parse_args

MAX_N = 1024  # a 32 x 32 grid; more images make a PNG nobody can read, and can fill the memory
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

USAGE = f"""\
usage: nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=K] [interpolate=true] [seed=0]

Write a PNG grid from a trained model: RUN_OR_CKPT is a run folder or a .ckpt file.

  n=64               how many images (1 to {MAX_N})
  out=samples.png    the image file to write (relative to the current directory)
  label=K            models with classes (cgan): samples of class K; default: one row per class
  interpolate=true   autoencoders, vae, gans: decoded straight lines between two codes (or noise
                     vectors); rbm: one Gibbs chain per row
  saliency=true      classifiers: input-gradient and occlusion maps of the first n test images
                     (of class K with label=K) instead of the errors grid; n=8 reads well
  seed=0             the random seed of the samples
  checkpoint=best    or last: which checkpoint of a run folder
  dataset=NAME       the dataset to draw test images from (same image shape)
"""

OPTIONS = {
    "n": "64",
    "out": "samples.png",
    "label": "",
    "interpolate": "false",
    "saliency": "false",
    "seed": "0",
    "checkpoint": "best",
}


def _out_path(text: str) -> Path:
    from nnlab.run_folder import check_writable

    out = Path(text).expanduser()
    if out.is_dir() or text.endswith(("/", "\\")):
        raise ConfigError(
            f"out={text} is a folder: give the image file to write, e.g. out={out / 'samples.png'}"
        )
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"out={text} has no image suffix: write out={out.with_suffix('.png')} "
            f"(one of {', '.join(IMAGE_SUFFIXES)})."
        )
    check_writable(out.parent if str(out.parent) else Path.cwd(), "folder for the image")
    return out


def sample(argv: list[str]) -> Path:
    target, opts, overrides = parse_args(argv, USAGE, OPTIONS)
    n = int_option(opts["n"], "n", maximum=MAX_N)
    seed = int_option(opts["seed"], "seed", minimum=0, maximum=2**32 - 1)
    check_choice("interpolate", opts["interpolate"].lower(), ("true", "false", "yes", "no"))
    interpolate = opts["interpolate"].lower() in ("true", "yes")
    check_choice("saliency", opts["saliency"].lower(), ("true", "false", "yes", "no"))
    saliency = opts["saliency"].lower() in ("true", "yes")
    out = _out_path(opts["out"])

    import pytorch_lightning as pl
    import torch
    from torchvision.utils import save_image

    from nnlab.inference import attach, load_for_inference

    _, model, datamodule, ckpt_path, _ = load_for_inference(
        target, overrides, which=opts["checkpoint"]
    )
    name = getattr(model, "hparams", {}).get("name", type(model).__name__)
    label = None
    if opts["label"] != "":
        classes = getattr(datamodule, "num_classes", None) or 0
        if classes < 1:
            raise ConfigError(f"label= needs a dataset with classes; {datamodule.name} has none.")
        label = int_option(opts["label"], "label", minimum=0, maximum=classes - 1)
    attach(model, datamodule)
    pl.seed_everything(seed, verbose=False)
    try:
        if saliency:
            image = _saliency(model, datamodule, n, label, name)
        else:
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
    try:
        save_image(image.detach().float().clamp(0, 1).cpu(), str(out))
    except OSError as err:
        from nnlab.errors import StorageError

        raise StorageError(f"Cannot write {out}: {err.strerror or err}.") from None
    print(f"nnlab sample: {out} ({image.shape[2]}x{image.shape[1]} px) from {ckpt_path}")
    return out


def _saliency(model, datamodule, n: int, label, name: str):
    """What a classifier looks at: nnlab.saliency's figure of the first n test images."""
    from nnlab import saliency
    from nnlab.models.classifiers import ClassifierBase

    if not isinstance(model, ClassifierBase):
        raise ConfigError(
            f"saliency=true: model '{name}' is not a classifier, so it has no class score to "
            "explain. Drop saliency=true (or pass a lenet or lstm run)."
        )
    x, y = datamodule.images("test", n, label)
    names = list(datamodule.classes or [])
    names = names if len(names) == model.num_classes else [str(i) for i in range(model.num_classes)]
    return saliency.figure(model, x.to(model.device), y.to(model.device), names)


def main(argv: list[str] | None = None) -> int:
    return run_command(sample, argv)


if __name__ == "__main__":
    raise SystemExit(main())
