"""`nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=3] [interpolate=true] [scale=2]`

Loads a trained model (as `nnlab eval` does) and writes the PNG grid its `sample_grid(n, label,
interpolate)` returns: reconstructions for the autoencoders (rows labelled input/reconstruction),
prior samples or interpolations for the vae, generator samples (a class, or one labelled row per
class) for the gans, Gibbs samples or chains for the RBM, an errors grid for the classifiers.

Every option is checked before torch is imported (for a run folder also `label=` against its model
and dataset), so a mistake answers at once; the options shared with `nnlab eval` (checkpoint,
accelerator, threads, seed, dataset) mean the same in both.
"""

from __future__ import annotations

from pathlib import Path

from nnlab.errors import ConfigError, check_choice, run_command
from nnlab.evaluate import COMMON_HELP, Request, int_option

MAX_N = 1024  # a 32 x 32 grid; more images make a PNG nobody can read, and can fill the memory
MAX_SCALE = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# models that draw no requested class: label= is refused before torch (others say so after)
UNCONDITIONAL = (
    "nnlab.models.gans.GAN",
    "nnlab.models.gans.DCGAN",
    "nnlab.models.vae.VAE",
    "nnlab.models.rbm.RBM",
    "nnlab.models.rbm.RBMCF",
)

USAGE = f"""\
usage: nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=K] [interpolate=true] [scale=2]

Write a PNG grid from a trained model: RUN_OR_CKPT is a run folder or a .ckpt file.

  n=64               how many images (1 to {MAX_N})
  out=samples.png    the image file to write (relative to the current directory)
  label=K            models with classes: samples of class K (cgan), test images of class K
                     (autoencoders, classifiers); default: one labelled row per class (cgan)
  interpolate=true   autoencoders, vae, gans: decoded straight lines between two codes (or noise
                     vectors); rbm: one Gibbs chain per row
  saliency=true      classifiers: input-gradient and occlusion maps of the first n test images
                     (of class K with label=K) instead of the errors grid; n=8 reads well
  scale=auto         enlarge the PNG this many times (nearest pixels); auto: to about 500 px
  nrow=N             images per row of a plain grid (default: a square)
{COMMON_HELP}"""

OPTIONS = {
    "n": "64",
    "out": "samples.png",
    "label": "",
    "interpolate": "false",
    "saliency": "false",
    "scale": "auto",
    "nrow": "",
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


def check_label(text: str, model: dict | None, dataset: dict | None) -> int | None:
    """label=K against the run's model and dataset (torch-free; a bare .ckpt is checked by the
    model itself once loaded)."""
    if text == "":
        return None
    label = int_option(text, "label", minimum=0)
    if model is None or dataset is None:
        return label
    name, target = model.get("name", "?"), str(model.get("_target_", ""))
    if target in UNCONDITIONAL:
        raise ConfigError(
            f"label={label}: model {name} is unconditional, it cannot draw a requested class "
            "(model=cgan can; autoencoders and classifiers take label= to pick test images). "
            "Leave label= out."
        )
    classes = dataset.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise ConfigError(
            f"label={label}: dataset {dataset.get('name')} has no classes. Leave label= out."
        )
    if label >= classes:
        names = dataset.get("classes") or []
        shown = ", ".join(f"{i} {n}" for i, n in enumerate(names)) if names else ""
        raise ConfigError(
            f"label={label} is out of range: dataset {dataset.get('name')} has {classes} classes, "
            f"label=0..{classes - 1}{f' ({shown})' if shown else ''}."
        )
    return label


def auto_scale(height: int, width: int) -> int:
    """Enlarge small grids to about 500 px (a 242 px grid of 28 px images: twice)."""
    return max(1, min(MAX_SCALE, 512 // max(height, width, 1)))


def sample(argv: list[str]) -> Path:
    request = Request(argv, USAGE, OPTIONS)
    opts = request.opts
    n = int_option(opts["n"], "n", maximum=MAX_N)
    check_choice("interpolate", opts["interpolate"].lower(), ("true", "false", "yes", "no"))
    interpolate = opts["interpolate"].lower() in ("true", "yes")
    check_choice("saliency", opts["saliency"].lower(), ("true", "false", "yes", "no"))
    saliency = opts["saliency"].lower() in ("true", "yes")
    scale = None if opts["scale"] == "auto" else int_option(opts["scale"], "scale", 1, MAX_SCALE)
    nrow = int_option(opts["nrow"], "nrow", maximum=MAX_N) if opts["nrow"] else None
    label = check_label(opts["label"], request.model, request.dataset)
    out = _out_path(opts["out"])

    image, ckpt_path = draw(request, n, label, interpolate, nrow, saliency)
    width, height = save_png(image, out, scale)
    print(f"nnlab sample: {out} ({width}x{height} px) from {ckpt_path}")
    return out


def draw(
    request: Request,
    n: int,
    label: int | None,
    interpolate: bool,
    nrow: int | None,
    saliency: bool = False,
):
    """The model's grid (3, H, W) in [0, 1] on the CPU, and the checkpoint it came from."""
    import pytorch_lightning as pl
    import torch

    from nnlab import viz
    from nnlab.device import check_device
    from nnlab.inference import attach, load_for_inference
    from nnlab.report import quiet_lightning

    quiet_lightning()
    if request.threads:
        torch.set_num_threads(request.threads)
    accelerator = request.opts["accelerator"]
    check_device(accelerator)
    _, model, datamodule, ckpt_path, _ = load_for_inference(
        request.target, request.overrides, which=request.opts["checkpoint"]
    )
    name = getattr(model, "hparams", {}).get("name", type(model).__name__)
    if label is not None:  # a bare .ckpt: its dataset is known only now
        classes = getattr(datamodule, "num_classes", None) or 0
        if classes < 1:
            raise ConfigError(f"label= needs a dataset with classes; {datamodule.name} has none.")
        label = int_option(str(label), "label", minimum=0, maximum=classes - 1)
    attach(model, datamodule, accelerator="cpu" if accelerator == "cpu" else "gpu")
    pl.seed_everything(request.seed, verbose=False)
    try:
        if saliency:
            image = _saliency(model, datamodule, n, label, name)
        else:
            with torch.no_grad(), viz.columns(nrow):
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
    return image.detach().float().clamp(0, 1).cpu(), ckpt_path


def picture(image, scale: int | None = None):
    """A (3, H, W) image in [0, 1] as a PIL image, enlarged `scale` times (None: auto)."""
    from PIL import Image

    pixels = image.mul(255).round().byte().permute(1, 2, 0).numpy()
    shown = Image.fromarray(pixels)
    scale = scale or auto_scale(shown.height, shown.width)
    if scale > 1:
        shown = shown.resize((shown.width * scale, shown.height * scale), Image.NEAREST)
    return shown


def save_png(image, out: Path, scale: int | None = None) -> tuple[int, int]:
    """A (3, H, W) image in [0, 1] as a PNG (or JPEG), enlarged `scale` times (None: auto);
    returns its (width, height)."""
    from nnlab.errors import StorageError

    shown = picture(image, scale)
    try:
        shown.save(out)
    except OSError as err:
        raise StorageError(f"Cannot write {out}: {err.strerror or err}.") from None
    return shown.width, shown.height


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
