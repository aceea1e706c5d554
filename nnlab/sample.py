"""`nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=3] [interpolate=true]`
`nnlab sample RUN_OR_CKPT [prompt="The "] [temperature=0.8] [n=500] [out=samples.txt]`

Loads a trained model (as `nnlab eval` does) and writes the PNG grid its `sample_grid(n, label,
interpolate)` returns: reconstructions for the autoencoders, prior samples or interpolations for the
vae, generator samples (a class or a class grid) for the gans, Gibbs samples or chains for the
RBM, an errors grid for the classifiers. A language model (char_rnn) instead prints (or writes to
a .txt) the text its `sample_text(prompt, temperature, n, seed)` generates.
"""

from __future__ import annotations

from pathlib import Path

from nnlab.errors import ConfigError, check_choice, run_command
from nnlab.evaluate import int_option, parse_args

MAX_N = 1024  # a 32 x 32 grid; more images make a PNG nobody can read, and can fill the memory
MAX_CHARS = 100_000  # generated characters
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".txt",)

USAGE = f"""\
usage: nnlab sample RUN_OR_CKPT [n=64] [out=samples.png] [label=K] [interpolate=true] [seed=0]

Write a PNG grid from a trained model: RUN_OR_CKPT is a run folder or a .ckpt file.

  n=64               how many images (1 to {MAX_N}); language models: characters (default 500)
  out=samples.png    the image file to write (relative to the current directory); language
                     models print the text, or write it to out=FILE.txt
  prompt="The "      language models (char_rnn): the text to continue (default: the model's)
  temperature=1.0    language models: sample from softmax(logits / temperature), > 0
  label=K            models with classes (cgan): samples of class K; default: one row per class
  interpolate=true   autoencoders, vae, gans: decoded straight lines between two codes (or noise
                     vectors); rbm: one Gibbs chain per row
  seed=0             the random seed of the samples
  checkpoint=best    or last: which checkpoint of a run folder
  dataset=NAME       the dataset to draw test images from (same image shape)
"""

OPTIONS = {
    "n": "",
    "out": "",
    "prompt": "",
    "temperature": "",
    "label": "",
    "interpolate": "false",
    "seed": "0",
    "checkpoint": "best",
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
            "model's own distribution, lower is more conservative). Example: temperature=0.8"
        )
    return value


def sample_text(model, opts: dict[str, str], ckpt_path) -> str:
    """A language model's text: printed, or written to out=FILE.txt."""
    n = int_option(opts["n"] or "500", "n", maximum=MAX_CHARS)
    temperature = _temperature(opts["temperature"] or "1.0")
    seed = int_option(opts["seed"], "seed", minimum=0, maximum=2**32 - 1)
    prompt = opts["prompt"] or str(model.hparams.get("prompt") or "")
    out = _out_path(opts["out"], TEXT_SUFFIXES, "text") if opts["out"] else None
    text = model.sample_text(prompt, temperature, n, seed)
    if out is None:
        print(text)
    else:
        try:
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            from nnlab.errors import StorageError

            raise StorageError(f"Cannot write {out}: {err.strerror or err}.") from None
        print(f"nnlab sample: {out} ({len(text)} characters) from {ckpt_path}")
    return text


def sample(argv: list[str]) -> Path | str:
    target, opts, overrides = parse_args(argv, USAGE, OPTIONS)
    seed = int_option(opts["seed"], "seed", minimum=0, maximum=2**32 - 1)
    text_asked = bool(opts["prompt"] or opts["temperature"])
    if text_asked:  # checked before loading anything
        _temperature(opts["temperature"] or "1.0")
        int_option(opts["n"] or "500", "n", maximum=MAX_CHARS)
        if opts["out"]:
            _out_path(opts["out"], TEXT_SUFFIXES, "text")
    else:
        n = int_option(opts["n"] or "64", "n", maximum=MAX_N)
        check_choice("interpolate", opts["interpolate"].lower(), ("true", "false", "yes", "no"))
        interpolate = opts["interpolate"].lower() in ("true", "yes")
        if not opts["out"].lower().endswith(TEXT_SUFFIXES):
            out = _out_path(opts["out"] or "samples.png")

    import pytorch_lightning as pl
    import torch
    from torchvision.utils import save_image

    from nnlab.inference import attach, load_for_inference
    from nnlab.models.base import NNLabModule

    _, model, datamodule, ckpt_path, _ = load_for_inference(
        target, overrides, which=opts["checkpoint"]
    )
    name = getattr(model, "hparams", {}).get("name", type(model).__name__)
    if type(model).sample_text is not NNLabModule.sample_text:  # a language model
        return sample_text(model, opts, ckpt_path)
    if text_asked or opts["out"].lower().endswith(TEXT_SUFFIXES):
        raise ConfigError(
            f"Model '{name}' does not generate text: prompt=, temperature= and out=FILE.txt are "
            "for language models (model=char_rnn). Drop them to get its image grid."
        )
    label = None
    if opts["label"] != "":
        classes = getattr(datamodule, "num_classes", None) or 0
        if classes < 1:
            raise ConfigError(f"label= needs a dataset with classes; {datamodule.name} has none.")
        label = int_option(opts["label"], "label", minimum=0, maximum=classes - 1)
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
    try:
        save_image(image.detach().float().clamp(0, 1).cpu(), str(out))
    except OSError as err:
        from nnlab.errors import StorageError

        raise StorageError(f"Cannot write {out}: {err.strerror or err}.") from None
    print(f"nnlab sample: {out} ({image.shape[2]}x{image.shape[1]} px) from {ckpt_path}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_command(sample, argv)


if __name__ == "__main__":
    raise SystemExit(main())
