"""The classifier family. ClassifierBase holds what every classifier shares: the cross-entropy
loss, accuracy (torchmetrics), the confusion matrix, per-class test accuracy, the gradient norm,
and the `errors` image (misclassified test images labelled true->pred, as in LeNet-5's figure).

    lenet   LeNet-5 (LeCun et al. 1998), classic (tanh, average pooling) or modern (ReLU, max pooling)
    lstm    a many-to-one RNN / GRU / LSTM (nnlab/models/sequences.py: sequences, and images
            read row by row)

Both minimise the cross-entropy  L = -log softmax(f(x))_y.
`load_classifier(path)` gives a trained LeNet back (eval mode) as a feature extractor (FID).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from nnlab import viz
from nnlab.errors import CheckpointError, ConfigError, NNLabError
from nnlab.models.base import NNLabModule
from nnlab.nets.lenet import VARIANTS, LeNet5


# -- the errors grid and the confusion matrix, as images ----------------------------------------
def pick_errors(images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, n: int):
    """The first n misclassified items: (images, targets, preds), all of the same length <= n."""
    wrong = (preds != targets).nonzero().flatten()[: max(0, n)]
    return images[wrong], targets[wrong], preds[wrong]


def error_labels(targets, preds, classes) -> list[str]:
    """'true->pred' per item, with the class names."""
    return [f"{classes[int(t)]}->{classes[int(p)]}" for t, p in zip(targets, preds)]


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _fit(draw, text: str, width: int, font) -> str:
    """text, cut to fit in `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def _to_tensor(canvas) -> torch.Tensor:
    import numpy as np

    return (
        torch.from_numpy(np.asarray(canvas.convert("RGB"), dtype=np.uint8).copy())
        .permute(2, 0, 1)
        .float()
        / 255
    )


def errors_grid(images: torch.Tensor, labels: list[str], nrow: int | None = None) -> torch.Tensor:
    """Misclassified images with their 'true->pred' caption drawn below each: a (3, H, W) image in [0, 1]."""
    from PIL import Image, ImageDraw

    font = _font()
    images = images.detach().float().clamp(0, 1).cpu()
    n = len(images)
    if n == 0:  # nothing misclassified: a small white image that says so
        canvas = Image.new("RGB", (160, 24), "white")
        ImageDraw.Draw(canvas).text((4, 6), "no misclassified images", fill="black", font=font)
        return _to_tensor(canvas)
    _, c, h, w = images.shape
    scale = max(1, math.ceil(84 / w))  # tiles ~84+ px wide, room for a caption
    tw, th, cap, pad = w * scale, h * scale, 26, 4
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = Image.new("RGB", (nrow * (tw + pad) + pad, rows * (th + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    pixels = (
        (images.expand(-1, 3, -1, -1) if c == 1 else images[:, :3]).mul(255).round().to(torch.uint8)
    )
    for i, (img, label) in enumerate(zip(pixels, labels)):
        x0, y0 = pad + (i % nrow) * (tw + pad), pad + (i // nrow) * (th + cap + pad)
        tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (x0, y0))
        true, _, pred = label.partition("->")
        if (
            draw.textlength(label, font=font) <= tw
        ):  # short names: one line, true in black, pred in red
            draw.text((x0 + 1, y0 + th + 1), true + "->", fill=(0, 0, 0), font=font)
            draw.text(
                (x0 + 1 + draw.textlength(true + "->", font=font), y0 + th + 1),
                pred,
                fill=(200, 0, 0),
                font=font,
            )
        else:
            draw.text(
                (x0 + 1, y0 + th + 1), _fit(draw, true + "->", tw, font), fill=(0, 0, 0), font=font
            )
            draw.text(
                (x0 + 1, y0 + th + 13), _fit(draw, pred, tw, font), fill=(200, 0, 0), font=font
            )
    return _to_tensor(canvas)


def confusion_image(cm: torch.Tensor, classes) -> torch.Tensor:
    """The confusion matrix (rows: true class, columns: predicted) as a heat map with counts."""
    from PIL import Image, ImageDraw

    font = _font()
    cm = cm.detach().cpu().long()
    k = cm.shape[0]
    share = cm.float() / cm.sum(1, keepdim=True).clamp(
        min=1
    )  # row-normalised: recall on the diagonal
    cell = 36
    names = [str(name) if str(name) == str(i) else f"{i} {name}" for i, name in enumerate(classes)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(probe.textlength(s, font=font) for s in names)) + 10
    top = 34
    canvas = Image.new("RGB", (left + k * cell + 4, top + k * cell + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 2), "rows: true class, columns: predicted", fill="black", font=font)
    for j in range(k):
        draw.text((left + j * cell + cell // 2 - 3, top - 14), str(j), fill="black", font=font)
    for i in range(k):
        draw.text((2, top + i * cell + cell // 2 - 6), names[i], fill="black", font=font)
        for j in range(k):
            v = float(share[i, j])
            colour = (int(255 * (1 - v)), int(255 * (1 - 0.6 * v)), 255)  # white -> blue
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(220, 220, 220)
            )
            text = str(int(cm[i, j]))
            tx = x0 + (cell - draw.textlength(text, font=font)) / 2
            draw.text(
                (tx, y0 + cell // 2 - 6), text, fill="white" if v > 0.5 else "black", font=font
            )
    return _to_tensor(canvas)


def _metric_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(name)).strip("_") or "class"


# -- the family's base ----------------------------------------------------------------------------
class ClassifierBase(NNLabModule):
    family = "classifier"

    def __init__(self, name, num_classes=10, n_errors=64, gradient_clip_val=None, **kwargs):
        super().__init__(name, **kwargs)
        self.num_classes, self.n_errors = int(num_classes), int(n_errors)
        self.default_clip = gradient_clip_val
        self.net = self.build_net()
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_cm = MulticlassConfusionMatrix(self.num_classes)
        self.extra_metrics: dict[str, float] = {}
        self._errors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    # -- the model ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class logits."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)

    # -- the Lightning steps -------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(self, batch, stage: str, acc):
        x, y = batch
        logits = self(x)
        preds = logits.argmax(1)
        acc.update(preds, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(x))
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=stage == "val", batch_size=len(x))
        return x, y, preds

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        x, y, preds = self._eval_step(batch, "test", self.test_acc)
        self.test_cm.update(preds, y)
        have = sum(len(e[0]) for e in self._errors)
        if have < self.n_errors:
            self._errors.append(pick_errors(x, y, preds, self.n_errors - have))

    def on_test_epoch_start(self):
        self._errors = []
        self.test_cm.reset()

    @torch.no_grad()
    def on_test_epoch_end(self):
        cm = self.test_cm.compute()
        classes = self._class_names()
        per_class = cm.diag().float() / cm.sum(1).clamp(min=1)
        self.extra_metrics = {
            f"test/acc_class/{_metric_key(c)}": float(a) for c, a in zip(classes, per_class)
        }
        viz.log_image(self, "confusion_matrix", confusion_image(cm, classes))
        if self._errors:
            images, targets, preds = (torch.cat(parts) for parts in zip(*self._errors))
            viz.log_image(
                self, "errors", errors_grid(images, error_labels(targets, preds, classes))
            )
        self._errors = []

    # -- gradients: the norm is logged (exploding gradients show), clipping per model -------------
    def on_before_optimizer_step(self, optimizer):
        # called after backward and before clipping: the raw gradient norm of this step, computed only
        # on the steps whose scalars Lightning writes (a pass over every gradient costs time)
        if not self.logging_step:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log(
                "train/grad_norm",
                torch.nn.utils.get_total_norm(grads),
                on_step=True,
                on_epoch=False,
            )

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        # trainer.gradient_clip_val wins when set; else the model's default (lstm: on, lenet: off)
        clip = gradient_clip_val if gradient_clip_val is not None else self.default_clip
        if clip:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=clip,
                gradient_clip_algorithm=gradient_clip_algorithm or "norm",
            )

    # -- images for `nnlab sample` ------------------------------------------------------------
    def _class_names(self, datamodule=None) -> list[str]:
        dm = datamodule or self.datamodule
        names = list(getattr(dm, "classes", None) or [])
        return (
            names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]
        )

    @torch.no_grad()
    def sample_grid(
        self, n: int = 64, label=None, interpolate: bool = False, datamodule=None
    ) -> torch.Tensor:
        """The errors grid on the test set: the first n misclassified test images (of true class
        `label` if given), each labelled true->pred. A (3, H, W) image in [0, 1]."""
        if interpolate:
            raise ConfigError(
                "interpolate=true is for generative models; a classifier's sample is its grid of "
                "misclassified test images. Drop interpolate=true."
            )
        dm = datamodule or self.datamodule
        if dm is None:
            raise NNLabError(
                "The classifier's sample is its errors grid on the test set, so it needs the run's "
                "datamodule: call sample_grid(..., datamodule=dm)."
            )
        if label is not None and not 0 <= int(label) < self.num_classes:
            raise ConfigError(f"label={label} is out of range; use 0..{self.num_classes - 1}.")
        dm.setup("test")
        images, targets = dm.splits["test"]
        was_training = self.training
        self.eval()
        found, step = [], 1024
        for i in range(0, len(images), step):
            x = images[i : i + step].to(self.device).float() / 255.0
            y = targets[i : i + step].to(self.device)
            if label is not None:
                keep = y == int(label)
                x, y = x[keep], y[keep]
            found.append(pick_errors(x, y, self.predict(x), n - sum(len(f[0]) for f in found)))
            if sum(len(f[0]) for f in found) >= n:
                break
        self.train(was_training)
        x, y, p = (torch.cat(parts) for parts in zip(*found))
        return errors_grid(x, error_labels(y, p, self._class_names(dm)))


# -- the models -------------------------------------------------------------------------------
class LeNet(ClassifierBase):
    """LeNet-5: conv-pool-conv-pool-F5-F6-out on 32x32 inputs (28x28 padded by 2)."""

    def __init__(self, name, variant="modern", channels_last=True, **kwargs):
        if variant not in VARIANTS:
            raise ConfigError(
                f"model.variant='{variant}' is unknown; use one of {', '.join(VARIANTS)}."
            )
        self.variant = variant
        super().__init__(name, **kwargs)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def build_net(self) -> nn.Module:
        return LeNet5(self.input_shape, self.num_classes, self.variant)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate (F6, 84-d) features of images in [0, 1] of the dataset's shape."""
        return self.net.features(self._layout(x))


# -- a trained LeNet back from its run (the feature extractor for FID) ------------------------------
def _checkpoint_in(run: Path) -> Path:
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if best:
        return best[-1]
    if last.is_file():
        return last
    raise CheckpointError(
        f"{run} holds no checkpoint (looked for best*.ckpt and last.ckpt in {folder}). "
        "Pass a finished lenet run folder or a .ckpt file."
    )


def load_classifier(path) -> LeNet:
    """A trained LeNet in eval mode on the CPU, from a run folder (its best checkpoint, else last)
    or a .ckpt file. Loaded with torch.load(weights_only=True): no code runs from the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist. Pass a lenet run folder (outputs/...) or its .ckpt file."
        )
    ckpt_path = _checkpoint_in(path) if path.is_dir() else path
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable, truncated, or a pickle we refuse
        raise CheckpointError(
            f"{ckpt_path} is not a readable checkpoint ({type(err).__name__}): it is not a "
            "PyTorch file, is truncated, or holds objects that a safe load (weights_only=True) "
            "refuses. Pass a checkpoint written by `nnlab train model=lenet`."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{ckpt_path} is not an nnlab (Lightning) checkpoint: it has no state_dict and "
            "hyper_parameters. Pass a checkpoint written by `nnlab train model=lenet`."
        )
    hp = dict(ckpt["hyper_parameters"])
    try:
        model = LeNet(**hp)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception:  # noqa: BLE001 - another model's arguments or weights
        raise CheckpointError(
            f"{ckpt_path} holds a '{hp.get('name', 'unknown')}' model, not a LeNet-5. "
            "Pass the run folder of `nnlab train model=lenet` (e.g. experiment=lenet_fashion)."
        ) from None
    return model.eval()


def __getattr__(name: str):
    """Runs made before the recurrent family moved to nnlab/models/sequences.py name
    nnlab.models.classifiers.SequenceClassifier in their config: the same class."""
    if name == "SequenceClassifier":
        from nnlab.models.sequences import SequenceClassifier

        return SequenceClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
