"""What a classifier looks at, per pixel, for images in [0, 1].

    saliency    |d f_c(x) / d x|, the largest over the channels, for the class c (Simonyan, Vedaldi
                & Zisserman 2014): the pixels whose small change moves the class score most
    occlusion   p_c(x) - p_c(x with a patch x patch square set to `fill`), for every position of
                the square on a `stride` grid, averaged over the squares covering each pixel
                (Zeiler & Fergus 2014): the pixels whose removal costs the class probability

Both are maps (N, H, W); `figure()` draws image | saliency | occlusion rows with their labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnlab.viz.charts import RED, captioned_grid, heat


def saliency(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The gradient magnitude of each image's class-`target` logit, max over channels (also
    inside Lightning's test stage, which runs in inference mode: on normal copies)."""
    with torch.inference_mode(False), torch.enable_grad():
        x, target = x.detach().clone().requires_grad_(True), target.clone()
        logits = model(x)
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.abs().amax(1)


@torch.no_grad()
def occlusion(
    model,
    x: torch.Tensor,
    target: torch.Tensor,
    patch: int = 6,
    stride: int = 2,
    fill: float = 0.0,
    batch: int = 1024,
) -> torch.Tensor:
    """The drop in the target-class probability when a square around each pixel is occluded."""
    n, _, h, w = x.shape
    tops = list(range(0, max(1, h - patch + 1), stride))
    lefts = list(range(0, max(1, w - patch + 1), stride))
    masks = torch.zeros(len(tops) * len(lefts), 1, h, w, device=x.device, dtype=x.dtype)
    for i, (t, left) in enumerate((t, left) for t in tops for left in lefts):
        masks[i, :, t : t + patch, left : left + patch] = 1
    base = F.softmax(model(x), 1).gather(1, target.view(-1, 1))  # (N, 1)
    maps = torch.zeros(n, h, w, device=x.device, dtype=x.dtype)
    cover = masks.sum(0).clamp(min=1)  # (1, H, W): how many squares hide each pixel
    for k in range(n):
        drops = []
        for chunk in masks.split(batch):
            occluded = x[k : k + 1] * (1 - chunk) + fill * chunk  # (m, C, H, W)
            probs = F.softmax(model(occluded), 1)[:, target[k]]
            drops.append(base[k] - probs)
        drops = torch.cat(drops)  # (positions,)
        maps[k] = (drops.view(-1, 1, 1, 1) * masks).sum(0)[0] / cover[0]
    return maps


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map's positive part scaled to [0, 1] by its own maximum (a blank map stays 0)."""
    positive = maps.clamp(min=0)
    top = positive.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return positive / top


def figure(
    model, x: torch.Tensor, y: torch.Tensor, classes, patch: int = 6, stride: int = 2, per_row=2
):
    """image | saliency | occlusion for the predicted class, `per_row` triples a row, each image
    captioned with its true class and the prediction (red when wrong) with its probability."""
    with torch.no_grad():
        probs = F.softmax(model(x), 1)
    conf, pred = probs.max(1)
    sal = heat(normalise(saliency(model, x, pred)))
    occ = heat(normalise(occlusion(model, x, pred, patch, stride)))
    tiles, captions = [], []
    for i in range(len(x)):
        if i % per_row == 0:
            tiles.append([])
            captions.append([])
        tiles[-1] += [x[i], sal[i], occ[i]]
        colour = (0, 0, 0) if int(pred[i]) == int(y[i]) else RED
        label = [
            (f"true {classes[int(y[i])]}", (0, 0, 0)),
            (f"pred {classes[int(pred[i])]} {100 * float(conf[i]):.0f}%", colour),
        ]
        captions[-1] += [label, [], []]
    titles = ["image", "input gradient", f"occlusion {patch}px"] * min(per_row, len(x))
    return captioned_grid(tiles, captions, titles, caption_span=3)
