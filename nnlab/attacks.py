"""Adversarial examples within an L-inf ball of radius eps around images in [0, 1].

    FGSM (Goodfellow, Shlens & Szegedy 2015)   x' = clip_[0,1](x + eps * sign(grad_x L(f(x), y)))
    PGD  (Madry et al. 2018)                   x_0 = x + U(-eps, eps)^d   (random start)
         x_{t+1} = Proj(x_t + alpha * sign(grad_x L(f(x_t), y))),   t = 0 .. steps-1
    where Proj clips to the ball |x' - x|_inf <= eps and to the pixel range [0, 1], and L is the
    cross-entropy of the logits f(x). alpha defaults to 2.5 * eps / steps (Madry et al.: enough to
    cross the ball and back from any start).

Both take gradients with respect to the input only (torch.autograd.grad): the model's parameters,
their .grad and its train/eval mode are left as they were. A model is anything that maps a batch
of images in [0, 1] to class logits.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nnlab.errors import ConfigError, check_choice
from nnlab.viz import eval_mode

KINDS = ("none", "fgsm", "pgd")  # model.adversarial.kind and the attacks of `nnlab robustness`
TRAINING_KEYS = {
    "kind": "none",
    "eps": 0.1,
    "steps": 7,
    "step_size": None,
    "random_start": True,
    "clean_weight": 0.0,
}


def training_attack(spec: dict | None) -> dict:
    """model.adversarial checked and completed: {kind, eps, steps, step_size, random_start,
    clean_weight}."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(TRAINING_KEYS))
    if unknown:
        raise ConfigError(
            f"model.adversarial has no key {unknown[0]!r}; its keys are {', '.join(TRAINING_KEYS)}."
        )
    spec = {**TRAINING_KEYS, **spec}
    check_choice("model.adversarial.kind", spec["kind"], KINDS)
    eps, steps, size = spec["eps"], spec["steps"], spec["step_size"]
    w = spec["clean_weight"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise ConfigError(
            f"model.adversarial.clean_weight={w!r} must be a number in [0, 1] (the weight of the "
            "clean images' loss beside the attacked ones'), e.g. "
            "model.adversarial.clean_weight=0.5."
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ConfigError(
            f"model.adversarial.eps={eps!r} must be a number in [0, 1] (an L-inf budget on pixels "
            "in [0, 1]), e.g. model.adversarial.eps=0.1."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(
            f"model.adversarial.steps={steps!r} must be a positive integer (PGD iterations per "
            "batch), e.g. model.adversarial.steps=7."
        )
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0
    ):
        raise ConfigError(
            f"model.adversarial.step_size={size!r} must be a positive number or null (2.5 * eps / "
            "steps), e.g. model.adversarial.step_size=0.03."
        )
    return spec


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule: 2.5 eps / steps."""
    return 2.5 * float(eps) / max(1, int(steps))


def input_gradient(model, x: torch.Tensor, y: torch.Tensor):
    """(grad_x of the summed cross-entropy, logits), both detached. Summed, not averaged, so the
    gradient of one image does not shrink with the batch size (only its sign is used here).
    Works inside Lightning's validation and test too (inference mode), on a normal copy of x."""
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.detach().clone().requires_grad_(True), y.clone()
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return grad, logits.detach()


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The fast gradient sign method: one step of eps along the sign of the input gradient."""
    grad, _ = input_gradient(model, x, y)
    return (x.detach() + float(eps) * grad.sign()).clamp(0.0, 1.0)


def pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    stop_when_fooled: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the negative loss (L-inf PGD of Madry et al. 2018).

    stop_when_fooled=True (evaluation): an image stops moving at the first iterate the model gets
    wrong, so the result fools the model wherever any iterate did (each iterate lies in the ball).
    Training uses the last iterate, as Madry et al."""
    eps = float(eps)
    alpha = default_step_size(eps, steps) if step_size is None else float(step_size)
    x = x.detach()
    low, high = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    x_adv = x.clone()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = torch.clamp(x + (2 * noise - 1) * eps, low, high)
    for _ in range(int(steps)):
        grad, logits = input_gradient(model, x_adv, y)
        stepped = torch.clamp(x_adv + alpha * grad.sign(), low, high)
        if stop_when_fooled:
            right = (logits.argmax(1) == y).view(-1, *[1] * (x.dim() - 1))
            stepped = torch.where(right, stepped, x_adv)
        x_adv = stepped
    return x_adv


def perturb(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    eps: float,
    steps: int = 1,
    step_size: float | None = None,
    random_start: bool = True,
    stop_when_fooled: bool = False,
) -> torch.Tensor:
    """One of KINDS by name: 'none' gives x back; 'fgsm' ignores steps, step_size, random_start."""
    if kind == "none":
        return x
    if kind == "fgsm":
        return fgsm(model, x, y, eps)
    if kind == "pgd":
        return pgd(model, x, y, eps, steps, step_size, random_start, stop_when_fooled)
    raise ValueError(f"unknown attack {kind!r}; use one of {KINDS}")


def robust_accuracy(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    eps_values,
    steps: int = 20,
    step_size: float | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    progress: bool = True,
    keep: int = 0,
) -> dict:
    """Accuracy under attack for each eps, batched on the images' device: an image counts as
    robust only if the model classifies it correctly both clean and attacked (as AutoAttack counts),
    so no attack can score above the clean accuracy. PGD stops moving an image once it is fooled.

    Returns {'acc': {eps: accuracy}, 'seconds': {eps: wall time}, 'examples': {eps: the first
    `keep` adversarial images}}, with the model in eval mode (its mode restored afterwards)."""
    n = len(images)
    batches = [(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    out = {"acc": {}, "seconds": {}, "examples": {}}
    name = kind if kind != "pgd" else f"pgd-{steps}"
    bar = tqdm(total=len(eps_values) * len(batches), desc=name, unit="batch", disable=not progress)
    with eval_mode(model):
        with torch.no_grad():
            clean = [model(images[a:b]).argmax(1) == labels[a:b] for a, b in batches]
        for eps in eps_values:
            right, seconds, examples = _under_attack(
                model, images, labels, batches, clean, eps, kind, steps, step_size, seed, keep, bar
            )
            if examples is not None:
                out["examples"][eps] = examples
            out["seconds"][eps] = seconds
            out["acc"][eps] = right / max(1, n)
            bar.set_postfix({f"acc@{eps:g}": f"{out['acc'][eps]:.3f}"})
    bar.close()
    return out


def _under_attack(
    model, images, labels, batches, clean, eps, kind, steps, step_size, seed, keep, bar
):
    """One attack at one eps over every batch (the model already in eval mode): (the images
    right both clean and attacked, the wall seconds, the first `keep` adversarial images or
    None). PGD's random starts come from a generator seeded afresh with `seed` at each eps."""
    generator = torch.Generator(device=images.device).manual_seed(int(seed))
    start, right, examples = time.perf_counter(), 0, None
    for (a, b), clean_right in zip(batches, clean):
        x, y = images[a:b], labels[a:b]
        if kind == "pgd":
            adv = pgd(model, x, y, eps, steps, step_size, True, True, generator)
        else:
            adv = perturb(model, x, y, kind, eps)
        with torch.no_grad():
            right += int(((model(adv).argmax(1) == y) & clean_right).sum())
        if a == 0 and keep:
            examples = adv[:keep]
        bar.update()
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return right, time.perf_counter() - start, examples
