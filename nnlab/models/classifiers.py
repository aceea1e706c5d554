"""The classifier family. ClassifierBase holds what every classifier shares: the cross-entropy
loss, accuracy (torchmetrics), the confusion matrix, per-class test accuracy, the gradient norm,
and the misclassified test images (labelled true->pred, as in LeNet-5's figure).

    lenet   LeNet-5 (LeCun et al. 1998), classic (tanh, average pooling) or modern (ReLU, max
    pooling)
    lstm    a many-to-one RNN / GRU / LSTM (nnlab/models/sequences.py: variable-length
            sequences, and images read row by row)

Both minimise the cross-entropy  L = -log softmax(f(x))_y;  with model.adversarial.kind=pgd (or
fgsm) the loss at the worst point of the eps-ball instead (Madry et al. 2018), see nnlab/attacks.py,
or with model.adversarial.clean_weight=a the mix  a L(x) + (1 - a) L(x_adv)  (Goodfellow et al.
2015).
`load_classifier(path)` gives a trained LeNet back (eval mode) as a feature extractor (FID).
Its figures (`confusion_matrix`, `errors`) are callbacks in nnlab/figures/classifiers.py.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from nnlab import viz
from nnlab.attacks import perturb, training_attack
from nnlab.errors import ConfigError, NNLabError, check_choice
from nnlab.models.base import DefaultClip, NNLabModule
from nnlab.nets.lenet import VARIANTS, LeNet5


# -- the misclassified images (the `errors` figure and `nnlab sample`) ---------------------------
def pick_errors(images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, n: int):
    """The first n misclassified items: (images, targets, preds), all of the same length <= n."""
    wrong = (preds != targets).nonzero().flatten()[: max(0, n)]
    return images[wrong], targets[wrong], preds[wrong]


def error_labels(targets, preds, classes) -> list[str]:
    """'true->pred' per item, with the class names."""
    return [f"{classes[int(t)]}->{classes[int(p)]}" for t, p in zip(targets, preds)]


def _metric_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(name)).strip("_") or "class"


# -- the family's base ----------------------------------------------------------------------------
class ClassifierBase(DefaultClip, NNLabModule):
    def __init__(
        self, name, num_classes=10, n_errors=64, gradient_clip_val=None, adversarial=None, **kwargs
    ):
        super().__init__(name, **kwargs)
        self.adversarial = training_attack(adversarial)
        self.num_classes, self.n_errors = int(num_classes), int(n_errors)
        self.default_clip = gradient_clip_val
        self.net = self.build_net()
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_cm = MulticlassConfusionMatrix(self.num_classes)

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    # -- the model ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> class logits."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)

    def attacked(self, inputs: list, y: torch.Tensor, stop_when_fooled=False) -> list:
        """The inputs with the images (the first) under model.adversarial's attack, unchanged
        for kind=none. Adversarial training (Madry et al. 2018) minimises the loss at this worst
        point of the eps-ball around the images (pixels in [0, 1])."""
        a = self.adversarial
        if a["kind"] == "none":
            return inputs
        x, rest = inputs[0], inputs[1:]
        adv = perturb(
            lambda images: self(images, *rest),
            x,
            y,
            a["kind"],
            a["eps"],
            a["steps"],
            a["step_size"],
            a["random_start"],
            stop_when_fooled,
        )
        return [adv, *rest]

    def step(self, batch, stage: str) -> dict:
        """The cross-entropy (in training of the attacked images under model.adversarial); on
        val/test also the accuracy, the robust accuracy under the training attack when there is
        one, and on test the confusion matrix. A batch is (inputs..., labels): (images, y), or
        (x, lengths, y) for sequences."""
        *inputs, y = batch
        if stage == "train":
            loss = F.cross_entropy(self(*self.attacked(inputs, y)), y)
            w = self.adversarial["clean_weight"]
            if w and self.adversarial["kind"] != "none":
                loss = w * F.cross_entropy(self(*inputs), y) + (1 - w) * loss
            return {"loss": loss}
        logits = self(*inputs)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(1)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc.update(preds, y)
        if stage == "test":
            self.test_cm.update(preds, y)
        out = {"loss": loss, "acc": acc}
        if self.adversarial["kind"] != "none":  # right both clean and under the training attack
            right = (self(*self.attacked(inputs, y, True)).argmax(1) == y) & (preds == y)
            out["adv_acc"] = right.float().mean()
        return out

    def on_test_epoch_start(self):
        self.test_cm.reset()

    @torch.no_grad()
    def on_test_epoch_end(self):
        """Per-class test accuracy (recall), from the confusion matrix."""
        cm = self.test_cm.compute()
        per_class = cm.diag().float() / cm.sum(1).clamp(min=1)
        self.extra_metrics = {
            f"test/acc_class/{_metric_key(c)}": float(a)
            for c, a in zip(self.class_names(), per_class)
        }

    # -- gradients: the norm is logged (exploding gradients show), clipping per model -------------
    def on_before_optimizer_step(self, optimizer):
        # after backward, before clipping: the raw gradient norm of this step, on the logged steps
        # only (a pass over every gradient costs time)
        if not self.logging_step:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log_terms("train", {"grad_norm": torch.nn.utils.get_total_norm(grads)})

    # -- images: the errors grid for `nnlab sample`; the figures are in nnlab/figures ------------
    def class_names(self, datamodule=None) -> list[str]:
        names = list(getattr(datamodule or self.datamodule, "classes", None) or [])
        if len(names) == self.num_classes:
            return names
        return [str(i) for i in range(self.num_classes)]

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
                "The classifier's sample is its errors grid on the test set, so it needs the "
                "run's datamodule: call sample_grid(..., datamodule=dm)."
            )
        if label is not None and not 0 <= int(label) < self.num_classes:
            raise ConfigError(f"label={label} is out of range; use 0..{self.num_classes - 1}.")
        images, targets = dm.images("test", label=label)
        found = [[], [], []]
        with viz.eval_mode(self):
            for x, y in zip(images.split(1024), targets.split(1024)):
                x, y = x.to(self.device), y.to(self.device)
                for part, new in zip(found, pick_errors(x, y, self.predict(x), n)):
                    part.append(new)
                if sum(len(p) for p in found[0]) >= n:
                    break
        x, y, p = (torch.cat(part)[:n] for part in found)
        return viz.errors_grid(x, error_labels(y, p, self.class_names(dm)))


# -- the models -------------------------------------------------------------------------------
class LeNet(ClassifierBase):
    """LeNet-5: conv-pool-conv-pool-F5-F6-out on 32x32 inputs (28x28 padded by 2)."""

    def __init__(self, name, variant="modern", channels_last=True, **kwargs):
        check_choice("model.variant", variant, VARIANTS)
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


# -- a trained LeNet back from its run (the feature extractor for FID) -----------------------------
def load_classifier(path) -> LeNet:
    """A trained LeNet in eval mode on the CPU, from a run folder (its best checkpoint, else last)
    or a .ckpt file. Loaded with torch.load(weights_only=True): no code runs from the file."""
    from nnlab.inference import load_weights

    return load_weights(path, LeNet, name="lenet", what="a LeNet-5")


def __getattr__(name: str):
    """Runs made before the recurrent family moved to nnlab/models/sequences.py name
    nnlab.models.classifiers.SequenceClassifier in their config: the same class."""
    if name == "SequenceClassifier":
        from nnlab.models.sequences import SequenceClassifier

        return SequenceClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
