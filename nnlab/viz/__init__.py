"""All of nnlab's drawing: image grids, captioned figures (PIL, no matplotlib), and the one way
to reach TensorBoard. Models say what to draw (nnlab/figures calls their hooks); this module
draws it, and logs it on rank 0 only.

    grid / rows / paired_grid   images in [0, 1] -> one (3, H, W) grid (make_grid's padding of 2)
    labelled                    a grid enlarged, with row and column labels and a title
    scatter_image               2-D codes coloured by class, with a legend
    errors_grid                 misclassified images captioned true->pred
    confusion_image             a confusion matrix as a heat map with counts
    eval_mode                   a module in eval mode for a block, its mode restored even on error
    tensorboards / log_image    the run's TensorBoard writers (rank 0), an image to each of them
    TensorBoardLogger           Lightning's, with its `epoch` scalar as train/epoch
"""

from __future__ import annotations

import contextlib
import math

import torch
from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from torchvision.utils import make_grid

from nnlab import lightning_compat as compat
from nnlab.data.datamodule import float_images

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


# -- grids ----------------------------------------------------------------------------------------
def side(n: int) -> int:
    """The one grid-width rule: images per row of a grid of n, the smallest square that holds
    them (64 -> 8, 10 -> 4)."""
    return max(1, math.isqrt(max(n, 1) - 1) + 1)


_COLUMNS: list[int | None] = [None]  # `columns`: images per row of the plain grids


@contextlib.contextmanager
def columns(nrow: int | None):
    """Inside the block, plain grids (those drawn without an explicit nrow) have nrow images per
    row (`nnlab sample nrow=16`); None keeps the defaults."""
    _COLUMNS.append(nrow)
    try:
        yield
    finally:
        _COLUMNS.pop()


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> one (3, H', W') grid image on the CPU; nrow images per row
    (default: `columns`, else side(N))."""
    images = images.detach().float().clamp(0, 1)
    nrow = nrow or _COLUMNS[-1] or side(len(images))
    return make_grid(images, nrow=nrow, padding=pad, pad_value=1.0).cpu()


def rows(*batches: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Stack equally long batches as rows: e.g. inputs above their reconstructions."""
    n = batches[0].shape[0]
    return grid(torch.cat([b[:n] for b in batches]), nrow=n, pad=pad)


def paired_grid(
    batches: list[torch.Tensor], per_row: int = 8, labels=None, title: str = ""
) -> torch.Tensor:
    """Equally long batches (e.g. inputs and reconstructions) as blocks of rows of `per_row`:
    images 0-7 of each batch, then images 8-15 of each batch, ...; `labels` (one per batch, e.g.
    input, reconstruction) name the rows (see `labelled`)."""
    n = len(batches[0])
    per_row = max(1, min(_COLUMNS[-1] or per_row, n))
    chunks = []
    for i in range(0, n, per_row):
        for b in batches:
            c = b[i : i + per_row]
            chunks.append(torch.cat([c, c.new_ones(per_row - len(c), *c.shape[1:])]))
    image = grid(torch.cat(chunks), nrow=per_row)
    if not labels:
        return image
    blocks = math.ceil(n / per_row)
    return labelled(image, batches[0].shape[-2:], rows=list(labels) * blocks, title=title)


def labelled(
    image: torch.Tensor, tile, rows=(), cols=(), title: str = "", scale: int = 2, pad: int = 2
) -> torch.Tensor:
    """A grid image (make_grid's layout: `tile` = (H, W) images, `pad` px apart) enlarged `scale`
    times, with a label left of each row, one above each column and a title: (3, H', W')."""
    from PIL import Image, ImageDraw

    font = _font()
    pixels = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    body = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    body = body.resize((body.width * scale, body.height * scale), Image.NEAREST)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h, w = (int(t) * scale for t in tile)
    step_y, step_x = h + pad * scale, w + pad * scale
    rows, cols = [str(r) for r in rows], [str(c) for c in cols]
    left = int(max([probe.textlength(r, font=font) for r in rows] + [0])) + (8 if rows else 0)
    top = (14 if title else 0) + (14 if cols else 0)
    canvas = Image.new("RGB", (left + body.width, top + body.height), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text(
            (left + 2, 1), _fit(draw, title, canvas.width - left, font), fill="black", font=font
        )
    for i, text in enumerate(rows):
        y = top + pad * scale + i * step_y + h // 2 - 6
        draw.text((left - 4 - draw.textlength(text, font=font), y), text, fill="black", font=font)
    for j, text in enumerate(cols):
        text = _fit(draw, text, step_x, font)
        x = left + pad * scale + j * step_x + (w - draw.textlength(text, font=font)) / 2
        draw.text((x, top - 13), text, fill="black", font=font)
    return to_tensor(canvas)


# -- captioned figures (PIL) ----------------------------------------------------------------------
def to_tensor(image) -> torch.Tensor:
    """A PIL image -> a (3, H, W) float tensor in [0, 1]."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return float_images(torch.from_numpy(array).permute(2, 0, 1))


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _fit(draw, text: str, width: int, font) -> str:
    """text, cut to fit in `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def scatter_image(
    points: torch.Tensor, labels: torch.Tensor, classes, size: int = 360
) -> torch.Tensor:
    """2-D codes as a (3, H, W) scatter plot coloured by class, with a legend."""
    from PIL import Image, ImageDraw

    pts, labels = points.detach().float().cpu(), labels.cpu().tolist()
    lo, hi = pts.min(0).values, pts.max(0).values
    margin = 8
    xy = (pts - lo) / (hi - lo).clamp_min(1e-8) * (size - 2 * margin) + margin
    image = Image.new("RGB", (size + 120, size), "white")
    draw = ImageDraw.Draw(image)
    for (px, py), c in zip(xy.tolist(), labels):
        py = size - py
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=PALETTE[c % len(PALETTE)])
    for i, name in enumerate(classes):
        y = 8 + 14 * i
        draw.rectangle([size + 6, y + 2, size + 14, y + 10], fill=PALETTE[i % len(PALETTE)])
        draw.text((size + 18, y), str(name), fill=(0, 0, 0))
    return to_tensor(image)


def _caption(draw, label: str, x0: int, y0: int, width: int, font) -> None:
    """'true->pred' below a tile: true in black, pred in red; on two lines when too wide."""
    true, _, pred = label.partition("->")
    if draw.textlength(label, font=font) <= width:
        draw.text((x0 + 1, y0 + 1), true + "->", fill=(0, 0, 0), font=font)
        offset = draw.textlength(true + "->", font=font)
        draw.text((x0 + 1 + offset, y0 + 1), pred, fill=(200, 0, 0), font=font)
    else:
        draw.text((x0 + 1, y0 + 1), _fit(draw, true + "->", width, font), fill=(0, 0, 0), font=font)
        draw.text((x0 + 1, y0 + 13), _fit(draw, pred, width, font), fill=(200, 0, 0), font=font)


def errors_grid(images: torch.Tensor, labels: list[str], nrow: int | None = None) -> torch.Tensor:
    """Misclassified images with their 'true->pred' caption drawn below each: a (3, H, W) image
    in [0, 1]."""
    from PIL import Image, ImageDraw

    font = _font()
    images = images.detach().float().clamp(0, 1).cpu()
    n = len(images)
    if n == 0:  # nothing misclassified: a small white image that says so
        canvas = Image.new("RGB", (160, 24), "white")
        ImageDraw.Draw(canvas).text((4, 6), "no misclassified images", fill="black", font=font)
        return to_tensor(canvas)
    _, c, h, w = images.shape
    scale = max(1, math.ceil(84 / w))  # tiles ~84+ px wide, room for a caption
    tw, th, cap, pad = w * scale, h * scale, 26, 4
    nrow = nrow or _COLUMNS[-1] or side(n)
    lines = math.ceil(n / nrow)
    canvas = Image.new("RGB", (nrow * (tw + pad) + pad, lines * (th + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    tiles = images.expand(-1, 3, -1, -1) if c == 1 else images[:, :3]
    pixels = tiles.mul(255).round().to(torch.uint8)
    for i, (img, label) in enumerate(zip(pixels, labels)):
        x0, y0 = pad + (i % nrow) * (tw + pad), pad + (i // nrow) * (th + cap + pad)
        tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (x0, y0))
        _caption(draw, label, x0, y0 + th, tw, font)
    return to_tensor(canvas)


def confusion_image(cm: torch.Tensor, classes) -> torch.Tensor:
    """The confusion matrix (rows: true class, columns: predicted) as a heat map with counts."""
    from PIL import Image, ImageDraw

    font = _font()
    cm = cm.detach().cpu().long()
    k = cm.shape[0]
    share = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)  # row-normalised: recall on diagonal
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
            box = [x0, y0, x0 + cell - 1, y0 + cell - 1]
            draw.rectangle(box, fill=colour, outline=(220, 220, 220))
            text = str(int(cm[i, j]))
            tx = x0 + (cell - draw.textlength(text, font=font)) / 2
            ink = "white" if v > 0.5 else "black"
            draw.text((tx, y0 + cell // 2 - 6), text, fill=ink, font=font)
    return to_tensor(canvas)


# -- the model's mode, and TensorBoard ------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """The module in eval mode inside the block; its train/eval mode restored after, even on
    error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def tensorboards(trainer) -> list:
    """The TensorBoard SummaryWriters of a run: on rank 0 only (elsewhere, and without a
    TensorBoard logger, none)."""
    if trainer is None or not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, LightningTensorBoardLogger)]


# every image's TensorBoard tag starts with this group: TensorBoard sorts its groups by name, so
# lr/, test/, train/ and val/ (the losses) come first and the figures after them
GROUP = "vis"


def log_image(trainer, tag: str, image: torch.Tensor, step: int | None = None) -> None:
    """Send a (3, H, W) image to the run's TensorBoard (rank 0) as `vis/<tag>`, at the step of its
    scalars."""
    tag = tag if tag.startswith(f"{GROUP}/") else f"{GROUP}/{tag}"
    writers = tensorboards(trainer)
    step = compat.logged_step(trainer) if step is None and writers else step
    for writer in writers:
        writer.add_image(tag, image, step)


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger; the `epoch` scalar Lightning adds to every write becomes
    train/epoch, so that TensorBoard's first groups are the learning rates and the losses (it
    sorts its groups by name), not a lone `epoch` chart."""

    def log_metrics(self, metrics, step=None) -> None:
        if "epoch" in metrics:
            metrics = {("train/epoch" if k == "epoch" else k): v for k, v in metrics.items()}
        super().log_metrics(metrics, step)
