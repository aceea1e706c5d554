"""The outlook families' figures (capsnet, snn, lapgan), drawn with PIL into (3, H, W) float
tensors in [0, 1]:

labelled_grid     image tiles with row and column captions (capsule perturbations, the LAPGAN
                  pyramid)
spike_raster      spikes of one layer: neurons x time steps (spiking nets)
membrane_traces   U[t] of a few neurons, the threshold dashed, spikes marked
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nnlab import viz

PALETTE = viz.PALETTE  # the house's line colours (tab10)
to_tensor = viz.to_tensor
_font = viz._font


def _tile(image: torch.Tensor, size: int):
    """(C, H, W) in [0, 1] -> a PIL RGB tile of size x size (nearest: pixels stay visible)."""
    from PIL import Image

    image = image.detach().float().clamp(0, 1).cpu()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    pixels = image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((size, size), Image.NEAREST)


def labelled_grid(
    tiles,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str = "",
    tile: int = 56,
) -> torch.Tensor:
    """tiles: R rows of K (C, H, W) images in [0, 1] (an (R, K, C, H, W) tensor, or lists when the
    sides differ) -> one image: a title, the column captions above, the row captions on the left.
    Every tile is shown at `tile` pixels (nearest neighbour)."""
    from PIL import Image, ImageDraw

    font = _font()
    rows, cols = len(tiles), len(tiles[0])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max([probe.textlength(s, font=font) for s in row_labels] + [0])) + 8
    top = (14 if title else 0) + (14 if col_labels else 0) + 4
    pad = 2
    width = max(left + cols * (tile + pad) + 4, int(probe.textlength(title, font=font)) + 8)
    canvas = Image.new("RGB", (width, top + rows * (tile + pad) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for k, label in enumerate(col_labels):
        x = left + k * (tile + pad) + (tile - probe.textlength(label, font=font)) / 2
        draw.text((x, top - 14), label, fill="black", font=font)
    for r in range(rows):
        y0 = top + r * (tile + pad)
        if r < len(row_labels):
            draw.text((4, y0 + tile // 2 - 6), row_labels[r], fill="black", font=font)
        for k in range(cols):
            canvas.paste(_tile(tiles[r][k], tile), (left + k * (tile + pad), y0))
    return to_tensor(canvas)


def spike_raster(spikes: torch.Tensor, title: str = "", max_neurons: int = 200) -> torch.Tensor:
    """spikes (T, N) of one image -> a raster: a black dot where neuron n (row) fired at step t
    (column). At most max_neurons rows (the first ones); the axes say steps and neuron indices."""
    from PIL import Image, ImageDraw

    font = _font()
    spikes = spikes.detach().float().cpu().flatten(1)[:, :max_neurons]
    steps, n = spikes.shape
    cw = max(3, min(12, 600 // max(steps, 1)))  # pixels per step
    rh = max(2, min(6, 400 // max(n, 1)))  # pixels per neuron
    left, top, bottom = 40, 18, 30
    title = title or f"spike raster: {n} neurons x {steps} steps"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(left + steps * cw + 10, int(probe.textlength(title, font=font)) + 8)
    height = top + n * rh + bottom
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black", font=font)
    draw.rectangle([left - 1, top - 1, left + steps * cw, top + n * rh], outline=(160, 160, 160))
    ts, ns = spikes.nonzero(as_tuple=True)
    dot = max(1, min(cw - 1, rh))  # square-ish dots, a gap between steps
    for t, i in zip(ts.tolist(), ns.tolist()):
        x0, y0 = left + t * cw + (cw - dot) // 2, top + i * rh
        draw.rectangle([x0, y0, x0 + dot - 1, y0 + max(1, rh - 1) - 1], fill="black")
    for i in range(0, n, max(1, n // 5)):  # neuron ticks
        draw.text((4, top + i * rh), str(i), fill=(90, 90, 90), font=font)
    for t in range(0, steps, max(1, steps // 5)):  # time ticks
        draw.text((left + t * cw, top + n * rh + 3), str(t), fill=(90, 90, 90), font=font)
    draw.text((left + steps * cw // 2 - 20, height - 13), "time step", fill="black", font=font)
    return to_tensor(canvas)


def membrane_traces(
    mems: torch.Tensor,
    spikes: torch.Tensor,
    names: Sequence[str],
    threshold: float = 1.0,
    title: str = "",
) -> torch.Tensor:
    """mems, spikes (T, K) of K neurons for one image -> U[t] as K coloured lines, the threshold
    as a dashed line, each spike as a tick above the plot in its neuron's colour, a legend."""
    from PIL import Image, ImageDraw

    font = _font()
    mems = mems.detach().float().cpu()
    spikes = spikes.detach().float().cpu()
    steps, k = mems.shape
    lo = min(float(mems.min()), 0.0)
    hi = max(float(mems.max()), threshold) * 1.05
    left, top, pw, ph, legend = 44, 18 + 6 * k, 420, 200, 150
    canvas = Image.new("RGB", (left + pw + legend, top + ph + 30), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title or "membrane potential U[t]", fill="black", font=font)

    def xy(t: float, u: float) -> tuple[float, float]:
        x = left + (t / max(steps - 1, 1)) * pw
        return x, top + ph - (u - lo) / (hi - lo) * ph

    draw.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    last_y = None
    for u in sorted({round(lo, 2), 0.0, threshold}, reverse=True):  # value ticks, 12 px apart
        y = xy(0, u)[1]
        if last_y is None or y - last_y >= 12:
            draw.text((4, y - 6), f"{u:.2f}", fill=(90, 90, 90), font=font)
            last_y = y
    y_th = xy(0, threshold)[1]
    for x in range(left, left + pw, 8):
        draw.line([x, y_th, x + 4, y_th], fill=(120, 120, 120))
    for j in range(k):
        colour = PALETTE[j % len(PALETTE)]
        draw.line([xy(t, float(mems[t, j])) for t in range(steps)], fill=colour, width=2)
        for t in spikes[:, j].nonzero().flatten().tolist():  # a tick per spike, one row per neuron
            x = xy(t, 0)[0]
            draw.line([x, 16 + 6 * j, x, 20 + 6 * j], fill=colour, width=2)
        ly = top + 14 * j
        draw.rectangle([left + pw + 10, ly + 3, left + pw + 20, ly + 9], fill=colour)
        n_spk = int(spikes[:, j].sum())
        draw.text((left + pw + 24, ly), f"{names[j]} ({n_spk})", fill="black", font=font)
    draw.text((left + pw + 10, top + 14 * k + 4), "(spikes)", fill=(90, 90, 90), font=font)
    draw.text((left + pw // 2 - 20, top + ph + 14), "time step", fill="black", font=font)
    for t in range(0, steps, max(1, math.ceil(steps / 5))):
        draw.text((xy(t, 0)[0] - 3, top + ph + 2), str(t), fill=(90, 90, 90), font=font)
    return to_tensor(canvas)
