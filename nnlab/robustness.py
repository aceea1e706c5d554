"""`nnlab robustness RUN_OR_CKPT [attacks=fgsm,pgd] [eps=...] [steps=20] [ood=digits] ...`

The weaknesses of a trained model, measured on its test split and written next to it:

  classifiers  accuracy under FGSM and PGD attacks for every eps (a curve and a grid of clean |
               perturbation | adversarial images), the max-softmax detector's AUROC against an
               out-of-distribution set (score histograms), the expected calibration error before
               and after temperature scaling fitted on the validation split (reliability diagrams)
  vae          the IWAE log-likelihood of the test split against the out-of-distribution set:
               both means and the AUROC (Nalisnick et al. 2019: it may prefer the wrong set)

Figures go to RUN/robustness/ (or out=DIR) as PNGs, the metrics are printed and written into the
run's metrics.json under "robustness" (keyed by the dataset). Loading is `nnlab eval`'s: weights
only, the model rebuilt from the packaged configs.
"""

from __future__ import annotations

import time
from pathlib import Path

from nnlab.errors import ConfigError, run_command
from nnlab.evaluate import int_option, parse_args

USAGE = """\
usage: nnlab robustness RUN_OR_CKPT [attacks=fgsm,pgd] [eps=0,0.05,0.1,0.2,0.3] [steps=20]
                        [ood=digits] [calibrate=true] [key=value ...]

Attack, probe and calibrate a trained model. RUN_OR_CKPT is a run folder or a .ckpt file.

  attacks=fgsm,pgd      classifiers: the attacks to run (fgsm, pgd or none; default: both)
  eps=0,0.05,0.1,0.2,0.3  the L-inf budgets on pixels in [0, 1]
  steps=20              PGD iterations (random start, step_size=auto is 2.5 eps / steps)
  step_size=auto        PGD step size in pixel units
  ood=digits            the out-of-distribution dataset (a dataset config of the same image
                        shape, e.g. digits or mnist; none skips it): max-softmax AUROC for
                        classifiers, the log-likelihood comparison for the vae
  calibrate=true        classifiers: ECE and reliability diagrams before/after temperature
                        scaling (fitted on the validation split)
  n=N                   only the first N test images (default: all)
  iw_k=K                vae: importance samples of the log-likelihood (default: the model's)
  out=DIR               where the PNGs go (default: RUN/robustness, or ./robustness for a .ckpt)
  checkpoint=best|last  which checkpoint of a run folder (default: best)
  accelerator=auto      auto (cuda when there is one), cpu or gpu
  threads=N             torch.set_num_threads
  seed=0                the seed of PGD's random starts and the vae's samples
  dataset=NAME          the in-distribution test set (default: the run's); dataset.KEY=VALUE
"""

OPTIONS = {
    "attacks": "auto",
    "eps": "0,0.05,0.1,0.2,0.3",
    "steps": "20",
    "step_size": "auto",
    "ood": "digits",
    "calibrate": "auto",
    "n": "",
    "iw_k": "",
    "out": "",
    "checkpoint": "best",
    "accelerator": "auto",
    "threads": "",
    "seed": "0",
}
ATTACKS = ("fgsm", "pgd")
N_SHOW = 8  # images in the adversarial grids


def _float_list(value: str, key: str) -> list[float]:
    try:
        values = sorted({float(v) for v in value.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values):
        raise ConfigError(
            f"{key}={value!r} is not valid: give comma-separated budgets in [0, 1] (pixels are in "
            f"[0, 1], so eps=1 already allows any image). Example: {key}=0,0.05,0.1,0.2,0.3"
        )
    return values


def _flag(value: str, key: str) -> bool | None:
    """true/false, or None for auto."""
    value = value.lower()
    if value == "auto":
        return None
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={value!r} is not valid: use {key}=true or {key}=false.")
    return value in ("true", "1", "yes")


def _attack_choice(value: str) -> str | list[str]:
    """attacks=: "auto", "none" or the listed attacks, each checked."""
    attacks = value.lower()
    if attacks in ("auto", "none"):
        return attacks
    chosen = [a.strip() for a in attacks.split(",") if a.strip()]
    for a in chosen:
        if a not in ATTACKS:
            raise ConfigError(
                f"attacks={value!r}: '{a}' is not an attack; use fgsm, pgd, fgsm,pgd or none."
            )
    return chosen


def _step_size(value: str) -> float | None:
    """step_size=: a positive number, or None for auto."""
    if value == "auto":
        return None
    try:
        step_size = float(value)
    except ValueError:
        step_size = -1.0
    if not step_size > 0:
        raise ConfigError(
            f"step_size={value!r} is not valid: it must be a positive number "
            "(pixel units) or auto (2.5 * eps / steps). Example: step_size=0.01"
        )
    return step_size


def settings(opts: dict[str, str]) -> dict:
    """The options as typed values, checked before torch is imported."""
    chosen = _attack_choice(opts["attacks"])
    step_size = _step_size(opts["step_size"])
    if opts["checkpoint"] not in ("best", "last"):
        raise ConfigError(f"checkpoint={opts['checkpoint']!r} is not valid: use best or last.")
    if opts["accelerator"] not in ("auto", "cpu", "gpu", "cuda"):
        raise ConfigError(
            f"accelerator={opts['accelerator']!r} is not valid: use auto, cpu or gpu."
        )
    return {
        "attacks": chosen,
        "eps": _float_list(opts["eps"], "eps"),
        "steps": int_option(opts["steps"], "steps"),
        "step_size": step_size,
        "ood": None if opts["ood"].lower() in ("none", "") else opts["ood"],
        "calibrate": _flag(opts["calibrate"], "calibrate"),
        "n": int_option(opts["n"], "n") if opts["n"] else None,
        "iw_k": int_option(opts["iw_k"], "iw_k") if opts["iw_k"] else None,
        "out": opts["out"],
        "checkpoint": opts["checkpoint"],
        "accelerator": opts["accelerator"],
        "threads": int_option(opts["threads"], "threads") if opts["threads"] else None,
        "seed": int_option(opts["seed"], "seed", minimum=0),
    }


def _device(name: str):
    import torch

    from nnlab.device import check_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)  # gpu without one: a DeviceError paragraph
    return torch.device("cpu" if name == "cpu" else "cuda")


def _test_images(datamodule, split: str, n: int | None, device):
    """(float images in [0, 1], labels) of the first n images of a split, on the device."""
    images, labels = datamodule.images(split, n)
    return images.to(device), labels.to(device)


def _logits(model, images, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat(
            [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )


def _ood_datamodule(name: str, shape, seed: int):
    from hydra.utils import instantiate

    from nnlab.errors import check_choice
    from nnlab.inference import compose
    from nnlab.run_folder import group_options

    check_choice("ood", name, group_options("dataset"))
    cfg = compose([f"dataset={name}"]).dataset
    if list(cfg.shape) != list(shape):
        raise ConfigError(
            f"ood={name}: its images have shape {list(cfg.shape)}, but the model reads images of "
            f"shape {list(shape)}. Pick an out-of-distribution set of the same shape (e.g. "
            "ood=digits or ood=mnist for a Fashion-MNIST model), or ood=none."
        )
    dm = instantiate(cfg, seed=seed)
    dm.prepare_data()
    return dm


# -- classifiers -------------------------------------------------------------------------------
def _attack_section(model, x, y, s, classes, batch_size, figures) -> dict[str, float]:
    from nnlab.attacks import robust_accuracy
    from nnlab.viz import charts

    metrics, curves = {}, {}
    eps_values = s["eps"] if 0.0 in s["eps"] else [0.0, *s["eps"]]
    shown = min((e for e in eps_values if e > 0), key=lambda e: abs(e - 0.1), default=None)
    for kind in s["attacks"]:
        name = "fgsm" if kind == "fgsm" else f"pgd{s['steps']}"
        result = robust_accuracy(
            model,
            x,
            y,
            kind,
            eps_values,
            s["steps"],
            s["step_size"],
            batch_size,
            s["seed"],
            keep=N_SHOW,
        )
        for eps, acc in result["acc"].items():
            metrics[f"{name}/acc_eps{eps:g}"] = acc
        attacked = [e for e in eps_values if e > 0]
        if attacked:
            seconds = sum(result["seconds"][e] for e in attacked) / len(attacked)
            metrics[f"{name}/seconds_per_eps"] = seconds
        label = "FGSM" if kind == "fgsm" else f"PGD-{s['steps']}"
        curves[label] = [result["acc"][e] for e in eps_values]
        if shown is not None:
            adv = result["examples"][shown]
            figures[f"adversarial_{name}"] = adversarial_grid(
                model, x[:N_SHOW], adv, y[:N_SHOW], shown, f"{label}, eps = {shown:g}", classes
            )
    if curves:
        title = f"accuracy under attack ({len(x)} test images)"
        figures["attack_curve"] = charts.line_chart(
            eps_values, curves, title, "eps (L-inf, pixels in [0, 1])", "accuracy"
        )
    return metrics


def adversarial_grid(model, clean, adv, labels, eps, title, classes):
    """Rows of clean | perturbation (mid-grey = 0, white = +eps, black = -eps) | adversarial,
    each image captioned with the model's prediction and probability (red when wrong)."""
    import torch
    import torch.nn.functional as F

    from nnlab.viz.charts import RED, captioned_grid

    with torch.no_grad():
        p_clean, p_adv = F.softmax(model(clean), 1), F.softmax(model(adv), 1)
    delta = (adv - clean) / (2 * eps) + 0.5 if eps > 0 else torch.full_like(clean, 0.5)
    tiles, captions = [], []

    def said(probs, i):
        conf, pred = probs[i].max(0)
        colour = (0, 0, 0) if int(pred) == int(labels[i]) else RED
        return (f"{classes[int(pred)]} {100 * float(conf):.0f}%", colour)

    for i in range(len(clean)):
        if i % 2 == 0:
            tiles.append([])
            captions.append([])
        linf = float((adv[i] - clean[i]).abs().max())
        tiles[-1] += [clean[i], delta[i], adv[i]]
        captions[-1] += [
            [(f"true {classes[int(labels[i])]}", (0, 0, 0)), said(p_clean, i)],
            [("perturbation", (0, 0, 0)), (f"max {linf:.3f}", (0, 0, 0))],
            [("adversarial", (0, 0, 0)), said(p_adv, i)],
        ]
    grid = captioned_grid(tiles, captions, ["clean", "perturbation", "adversarial"] * 2, 112)
    return _titled(grid, title)


def _titled(image, title: str):
    """A line of text above an image."""
    from PIL import Image, ImageDraw

    from nnlab.viz.charts import INK, font, to_tensor

    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    body = Image.fromarray(pixels)
    canvas = Image.new("RGB", (body.width, body.height + 20), "white")
    canvas.paste(body, (0, 20))
    ImageDraw.Draw(canvas).text((6, 4), title, fill=INK, font=font(12))
    return to_tensor(canvas)


def _calibration_section(model, x, y, datamodule, batch_size, figures) -> dict[str, float]:
    from nnlab.metrics.calibration import calibration_report
    from nnlab.viz import charts

    val_x, val_y = _test_images(datamodule, "val", None, x.device)
    metrics, bins = calibration_report(
        _logits(model, x, batch_size), y, _logits(model, val_x, batch_size), val_y
    )
    eces = [metrics["ece"], metrics["ece_scaled"]]
    panels = [
        charts.reliability_diagram(b, f"test, {name}", ece)
        for (name, b), ece in zip(bins.items(), eces)
    ]
    figures["reliability"] = charts.hconcat(panels)
    return {f"calibration/{k}": v for k, v in metrics.items()}


def _ood_section(model, x, ood_x, in_name, ood_name, batch_size, figures) -> dict[str, float]:
    from nnlab.metrics.ood import auroc, max_softmax
    from nnlab.viz import charts

    s_in, s_out = (
        max_softmax(_logits(model, x, batch_size)),
        max_softmax(_logits(model, ood_x, batch_size)),
    )
    score = auroc(s_in, s_out)
    figures["ood_max_softmax"] = charts.histograms(
        {f"{in_name} test": s_in, f"{ood_name} test": s_out},
        f"max-softmax scores: in-distribution vs {ood_name}",
        "max softmax probability",
        notes=[f"AUROC = {score:.3f}"],
    )
    return {
        f"ood_{ood_name}/auroc_max_softmax": score,
        f"ood_{ood_name}/max_softmax_in": float(s_in.mean()),
        f"ood_{ood_name}/max_softmax_out": float(s_out.mean()),
    }


# -- the vae -----------------------------------------------------------------------------------
def _vae_ood_section(model, x, ood_x, in_name, ood_name, k, figures) -> dict[str, float]:
    import torch
    from tqdm.auto import tqdm

    from nnlab.metrics.ood import auroc
    from nnlab.viz import charts

    def loglik(images, desc):
        chunk = max(1, model.iw_chunk // k)
        out = []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), chunk), desc=desc, unit="batch"):
                out.append(model.log_likelihood_iw(images[i : i + chunk], k))
        return torch.cat(out)

    ll_in, ll_out = loglik(x, f"log p(x) {in_name}"), loglik(ood_x, f"log p(x) {ood_name}")
    score = auroc(ll_in, ll_out)
    figures["ood_loglik"] = charts.histograms(
        {f"{in_name} test": ll_in, f"{ood_name} test": ll_out},
        f"VAE log-likelihood (IWAE, k = {k}): in-distribution vs {ood_name}",
        "log p(x), nats per image",
        notes=[f"AUROC = {score:.3f}", "(< 0.5: higher likelihood on the OOD set)"],
    )
    return {
        f"ood_{ood_name}/loglik_in": float(ll_in.mean()),
        f"ood_{ood_name}/loglik_out": float(ll_out.mean()),
        f"ood_{ood_name}/auroc_loglik": score,
    }


# -- the command ---------------------------------------------------------------------------------
def robustness(argv: list[str]) -> dict[str, float]:
    target, opts, overrides = parse_args(argv, USAGE, OPTIONS)
    s = settings(opts)
    import torch

    from nnlab.run_folder import RunLock, is_run_dir, run_dir_of

    if s["threads"]:
        torch.set_num_threads(s["threads"])
    path = Path(target).expanduser()
    run = path if is_run_dir(path) else run_dir_of(path) if path.is_file() else None
    lock = RunLock(run, "nnlab robustness").acquire() if run is not None else None
    try:
        return _measure(target, overrides, s, opts)
    finally:
        if lock is not None:
            lock.release()


def _measure(target, overrides, s, opts) -> dict[str, float]:
    import torch

    from nnlab.inference import load_for_inference

    cfg, model, dm, ckpt_path, run_dir = load_for_inference(target, overrides, s["checkpoint"])
    is_classifier, is_vae = _check_model(model, cfg.get("name", type(model).__name__), s, opts)
    attacks = list(ATTACKS) if s["attacks"] == "auto" and is_classifier else s["attacks"]
    attacks = [] if attacks in ("auto", "none") else attacks
    s["attacks"] = attacks
    device = _device(s["accelerator"])
    model.to(device).eval()
    torch.manual_seed(s["seed"])
    x, y = _test_images(dm, "test", s["n"], device)
    started = time.perf_counter()
    metrics, figures = _sections(model, dm, x, y, s, device, is_classifier)
    seconds = time.perf_counter() - started
    out = _save_figures(figures, s["out"], run_dir)
    width = max([len(k) for k in metrics] + [6])
    print(f"nnlab robustness: {ckpt_path} on {dm.name} ({len(x)} test images, {device.type})")
    for key, value in sorted(metrics.items()):
        print(f"  {key:<{width}}  {value:.6g}")
    print(f"figures: {', '.join(f'{k}.png' for k in figures)} in {out} ({seconds:.0f} s)")
    if run_dir is not None:
        _record(run_dir, dm.name, ckpt_path, metrics, s, device, seconds, out)
    return metrics


def _check_model(model, name: str, s: dict, opts: dict[str, str]) -> tuple[bool, bool]:
    """(is it a classifier, is it the vae); a ConfigError for settings the model cannot take."""
    from nnlab.models.classifiers import ClassifierBase
    from nnlab.models.vae import VAE

    is_classifier, is_vae = isinstance(model, ClassifierBase), isinstance(model, VAE)
    if s["attacks"] not in ("auto", "none") and not is_classifier:
        raise ConfigError(
            f"attacks={opts['attacks']}: model '{name}' is not a classifier, and FGSM and PGD "
            "attack a classifier's predictions. Attack a classifier run (lenet, lstm, stacked_ae), "
            "or pass attacks=none."
        )
    if s["calibrate"] and not is_classifier:
        raise ConfigError(
            f"calibrate=true: model '{name}' is not a classifier, so it has no confidences to "
            "calibrate. Drop calibrate=true."
        )
    if not (is_classifier or is_vae):
        raise ConfigError(
            f"nnlab robustness measures classifiers (attacks, OOD detection, calibration) and the "
            f"vae (the likelihood of OOD data); model '{name}' is neither. Its clustering scores "
            "are logged by its test stage (nnlab eval)."
        )
    return is_classifier, is_vae


def _sections(model, dm, x, y, s, device, is_classifier: bool) -> tuple[dict, dict]:
    """Every measurement that applies to the model: (metrics, figures by file stem)."""
    classes = list(getattr(dm, "classes", None) or [])
    if is_classifier and len(classes) != model.num_classes:
        classes = [str(i) for i in range(model.num_classes)]
    batch = int(dm.eval_batch_size)
    metrics: dict[str, float] = {}
    figures: dict = {}
    if is_classifier:
        metrics["clean_acc"] = float((_logits(model, x, batch).argmax(1) == y).float().mean())
        metrics.update(_attack_section(model, x, y, s, classes, batch, figures))
        if s["calibrate"] is not False:
            metrics.update(_calibration_section(model, x, y, dm, batch, figures))
    if s["ood"]:
        ood = _ood_datamodule(s["ood"], model.input_shape, s["seed"])
        ood_x, _ = _test_images(ood, "test", None, device)
        if is_classifier:
            metrics.update(_ood_section(model, x, ood_x, dm.name, ood.name, batch, figures))
        else:
            k = s["iw_k"] or model.iw_k
            metrics.update(_vae_ood_section(model, x, ood_x, dm.name, ood.name, k, figures))
    return metrics, figures


def _save_figures(figures, out_opt: str, run_dir) -> Path:
    """The PNGs in out=DIR (default RUN/robustness, or ./robustness for a .ckpt); the folder."""
    from torchvision.utils import save_image

    out = Path(out_opt).expanduser() if out_opt else (run_dir or Path.cwd()) / "robustness"
    out.mkdir(parents=True, exist_ok=True)
    for key, image in figures.items():
        save_image(image, str(out / f"{key}.png"))
    return out


def _record(run_dir, dataset, ckpt_path, metrics, s, device, seconds, out) -> None:
    """The run's metrics.json gets the entry under robustness.<dataset>."""
    from nnlab.run_record import RunRecord

    entry = {
        "checkpoint": str(ckpt_path),
        "metrics": dict(sorted(metrics.items())),
        "settings": {k: v for k, v in s.items() if k not in ("out", "threads")},
        "device": device.type,
        "seconds": seconds,
        "figures": str(out),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RunRecord.add_eval(run_dir, dataset, entry, section="robustness")
    print(f"written to {run_dir / 'metrics.json'} (robustness.{dataset})")


def main(argv: list[str] | None = None) -> int:
    return run_command(robustness, argv)


if __name__ == "__main__":
    raise SystemExit(main())
