"""`nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=3] [interpolate=true] [scale=2]`

Loads a trained model (as `nnlab eval` does) and writes the PNG grid its `sample_grid(n, label,
interpolate)` returns: reconstructions for the autoencoders (rows labelled input/reconstruction),
prior samples or interpolations for the vae, generator samples (a class, or one labelled row per
class) for the gans, Gibbs samples or chains for the RBM, an errors grid for the classifiers.

`nnlab sample RUN_OR_CKPT [prompt="The "] [temperature=0.8] [n=500] [out=samples.txt]`

The text family answers in text (printed, or written to out=FILE.txt) through its
`sample_text(prompt, temperature, n, seed)` hook: a language model (char_rnn) continues the
prompt with n sampled characters; a translator (seq2seq) translates the prompt (default: n
validation verses beside their references); a text classifier (char_cnn, bag_of_chars, lstm on
dataset=fortunes_files) gives the prompt's most likely classes (default: n misclassified test
texts).

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
MAX_CHARS = 100_000  # generated characters (language models)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".txt",)
# models and datasets that answer in text (checked before torch for a run folder)
TEXT_MODELS = (
    "nnlab.models.text.CharLM",
    "nnlab.models.text.Translator",
    "nnlab.models.text.CharCNNClassifier",
    "nnlab.models.text.BagOfCharsClassifier",
)
TEXT_DATASETS = (
    "nnlab.data.text.CharLMDataModule",
    "nnlab.data.text.FortuneFilesDataModule",
    "nnlab.data.text.ParallelVersesDataModule",
)
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
       nnlab sample RUN_OR_CKPT [prompt="The "] [temperature=0.8] [n=500] [out=FILE.txt]

Write a PNG grid from a trained model: RUN_OR_CKPT is a run folder or a .ckpt file. Text models
print text instead (or write it to out=FILE.txt).

  n=64               how many images (1 to {MAX_N}); char_rnn: characters to generate (default
                     500, at most {MAX_CHARS}); seq2seq, text classifiers: verses / texts (8)
  out=samples.png    the image file to write (relative to the current directory)
  prompt="The "      char_rnn: the text to continue (default: the model's prompt); seq2seq: a
                     sentence to translate; text classifiers: a text to classify
  temperature=1.0    char_rnn: sample from softmax(logits / temperature); a number > 0
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
    "n": "",
    "out": "",
    "prompt": "",
    "temperature": "",
    "label": "",
    "interpolate": "false",
    "saliency": "false",
    "scale": "auto",
    "nrow": "",
}


def _out_path(text: str, suffixes=IMAGE_SUFFIXES, what: str = "image") -> Path:
    from nnlab.run_folder import check_writable

    out = Path(text).expanduser()
    if out.is_dir() or text.endswith(("/", "\\")):
        raise ConfigError(
            f"out={text} is a folder: give the {what} file to write, e.g. "
            f"out={out / ('samples' + suffixes[0])}"
        )
    if out.suffix.lower() not in suffixes:
        raise ConfigError(
            f"out={text} has no {what} suffix: write out={out.with_suffix(suffixes[0])} "
            f"(one of {', '.join(suffixes)})."
        )
    check_writable(out.parent if str(out.parent) else Path.cwd(), f"folder for the {what}")
    return out


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(
            f"temperature={text!r} is not valid: it must be a number > 0 (1 samples from the "
            "model's own distribution, lower is more conservative; 0 would divide by zero). "
            "Example: temperature=0.8"
        )
    return value


def is_text(model: dict | None, dataset: dict | None) -> bool:
    """A run of the text family (from its config, before torch)."""
    targets = (str((model or {}).get("_target_")), str((dataset or {}).get("_target_")))
    return targets[0] in TEXT_MODELS or targets[1] in TEXT_DATASETS


def check_text_options(opts: dict[str, str], text: bool | None) -> None:
    """Options that only text models take, refused for an image model (text False), and the text
    options' values (before torch)."""
    asked = [k for k in ("prompt", "temperature") if opts[k]]
    if text is False:
        if asked:
            raise ConfigError(
                f"{', '.join(asked)}: this run's model draws images, not text; prompt= and "
                "temperature= are for the text models (char_rnn, seq2seq, text classifiers). "
                "Drop them to get its image grid."
            )
        return  # n= and out= are an image grid's
    if opts["temperature"]:
        _temperature(opts["temperature"])
    if opts["n"] and (text or asked):
        int_option(opts["n"], "n", maximum=MAX_CHARS)
    if opts["out"] and (text or asked):
        _out_path(opts["out"], TEXT_SUFFIXES, "text")


def write_text(request: Request) -> str:
    """A text model's answer to the request: printed, or written to out=FILE.txt."""
    import pytorch_lightning as pl
    import torch

    from nnlab.device import check_device
    from nnlab.figures import overrides
    from nnlab.inference import attach, load_for_inference
    from nnlab.models.classifiers import ClassifierBase
    from nnlab.models.text import classifier_text
    from nnlab.report import quiet_lightning

    opts = request.opts
    quiet_lightning()
    if request.threads:
        torch.set_num_threads(request.threads)
    check_device(opts["accelerator"])
    _, model, datamodule, ckpt_path, _ = load_for_inference(
        request.target, request.overrides, which=opts["checkpoint"]
    )
    name = getattr(model, "hparams", {}).get("name", type(model).__name__)
    attach(model, datamodule, accelerator="cpu" if opts["accelerator"] == "cpu" else "gpu")
    pl.seed_everything(request.seed, verbose=False)
    n = int(opts["n"]) if opts["n"] else None
    temperature = _temperature(opts["temperature"]) if opts["temperature"] else None
    with torch.no_grad():
        if overrides(model, "sample_text"):
            text = model.sample_text(opts["prompt"], temperature, n, request.seed)
        elif isinstance(model, ClassifierBase) and hasattr(datamodule, "texts"):
            if temperature is not None:
                raise ConfigError(
                    f"temperature= is for language models; model '{name}' classifies texts."
                )
            text = classifier_text(model, datamodule, opts["prompt"], n)
        else:
            raise ConfigError(
                f"Model '{name}' ({type(model).__name__}) does not answer in text: prompt=, "
                "temperature= and out=FILE.txt are for the text models. Drop them to get its "
                "image grid."
            )
    if not opts["out"]:
        print(text)
        return text
    out = _out_path(opts["out"], TEXT_SUFFIXES, "text")
    try:
        out.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        from nnlab.errors import StorageError

        raise StorageError(f"Cannot write {out}: {err.strerror or err}.") from None
    print(f"nnlab sample: {out} ({len(text)} characters) from {ckpt_path}")
    return text


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


def sample(argv: list[str]) -> Path | str:
    request = Request(argv, USAGE, OPTIONS)
    opts = request.opts
    text = is_text(request.model, request.dataset) if request.run is not None else None
    check_text_options(opts, text)
    asked = bool(opts["prompt"] or opts["temperature"] or opts["out"].lower().endswith(".txt"))
    if text or (text is None and asked):  # a bare .ckpt: the model decides once loaded
        return write_text(request)
    n = int_option(opts["n"] or "64", "n", maximum=MAX_N)
    check_choice("interpolate", opts["interpolate"].lower(), ("true", "false", "yes", "no"))
    interpolate = opts["interpolate"].lower() in ("true", "yes")
    check_choice("saliency", opts["saliency"].lower(), ("true", "false", "yes", "no"))
    saliency = opts["saliency"].lower() in ("true", "yes")
    scale = None if opts["scale"] == "auto" else int_option(opts["scale"], "scale", 1, MAX_SCALE)
    nrow = int_option(opts["nrow"], "nrow", maximum=MAX_N) if opts["nrow"] else None
    label = check_label(opts["label"], request.model, request.dataset)
    out = _out_path(opts["out"] or "samples.png")

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
