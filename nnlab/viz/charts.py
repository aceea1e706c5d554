"""Charts and labelled image grids drawn with PIL, returned as (3, H, W) float tensors in [0, 1]
(TensorBoard's add_image, torchvision's save_image): line charts (accuracy against epsilon),
overlaid histograms (OOD scores), reliability diagrams, bar charts (class histograms), grids of
captioned tiles (adversarial examples, saliency maps) and a heat colour map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nnlab.viz import to_tensor

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
GRID, INK, RED = (228, 228, 228), (0, 0, 0), (200, 0, 0)


def font(size: int = 12):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def hconcat(images: Sequence[torch.Tensor], pad: int = 8) -> torch.Tensor:
    """(3, H_i, W_i) images side by side on white, top-aligned."""
    height = max(i.shape[1] for i in images)
    width = sum(i.shape[2] for i in images) + pad * (len(images) - 1)
    out = torch.ones(3, height, width)
    x = 0
    for image in images:
        out[:, : image.shape[1], x : x + image.shape[2]] = image
        x += image.shape[2] + pad
    return out


def nice_ticks(low: float, high: float, n: int = 5) -> list[float]:
    """About n round tick values covering [low, high] (steps of 1, 2 or 5 times a power of 10)."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, n)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


class Axes:
    """A white canvas with a framed plotting area, grid lines, ticks, axis labels and a title;
    the drawing methods take data coordinates."""

    LEFT, RIGHT, TOP, BOTTOM = 58, 14, 26, 44

    def __init__(self, xlim, ylim, title="", xlabel="", ylabel="", size=(480, 320), xticks=None):
        from PIL import Image, ImageDraw

        self.canvas = Image.new("RGBA", size, "white")
        self.draw = ImageDraw.Draw(self.canvas)
        self.font, self.small = font(12), font(12)
        (self.x0, self.x1), (self.y0, self.y1) = (float(v) for v in xlim), (float(v) for v in ylim)
        w, h = size
        self.box = (self.LEFT, self.TOP, w - self.RIGHT, h - self.BOTTOM)
        left, top, right, bottom = self.box
        for tick in xticks if xticks is not None else nice_ticks(self.x0, self.x1):
            u, _ = self.px(tick, self.y0)
            self.draw.line([(u, top), (u, bottom)], fill=GRID)
            self._centred(u, bottom + 4, _label(tick), self.small)
        for tick in nice_ticks(self.y0, self.y1):
            _, v = self.px(self.x0, tick)
            self.draw.line([(left, v), (right, v)], fill=GRID)
            text = _label(tick)
            tw = self.draw.textlength(text, font=self.small)
            self.draw.text((left - 5 - tw, v - 7), text, fill=INK, font=self.small)
        self.draw.rectangle(self.box, outline=INK)
        self._centred((left + right) / 2, 5, title, self.font)
        self._centred((left + right) / 2, h - 20, xlabel, self.font)
        if ylabel:
            self._vertical(4, (top + bottom) / 2, ylabel)

    def _centred(self, u, v, text, fnt):
        self.draw.text((u - self.draw.textlength(text, font=fnt) / 2, v), text, fill=INK, font=fnt)

    def _vertical(self, u, v, text):
        from PIL import Image, ImageDraw

        width = int(self.draw.textlength(text, font=self.font)) + 2
        label = Image.new("RGBA", (width, 16), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((1, 1), text, fill=INK, font=self.font)
        label = label.rotate(90, expand=True)
        self.canvas.alpha_composite(label, (int(u), int(v - width / 2)))

    def px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        u = left + (float(x) - self.x0) / (self.x1 - self.x0 or 1) * (right - left)
        v = bottom - (float(y) - self.y0) / (self.y1 - self.y0 or 1) * (bottom - top)
        return u, v

    def polyline(self, xs, ys, colour, width: int = 2, markers: bool = True) -> None:
        points = [self.px(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=width)
        for u, v in points if markers else []:
            self.draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)

    def dashed(self, xa, ya, xb, yb, colour=(120, 120, 120), dash: int = 6) -> None:
        (ua, va), (ub, vb) = self.px(xa, ya), self.px(xb, yb)
        length = math.hypot(ub - ua, vb - va)
        for i in range(0, int(length), 2 * dash):
            t0, t1 = i / length, min(1.0, (i + dash) / length)
            self.draw.line(
                [
                    (ua + t0 * (ub - ua), va + t0 * (vb - va)),
                    (ua + t1 * (ub - ua), va + t1 * (vb - va)),
                ],
                fill=colour,
            )

    def bar(self, xa, xb, ya, yb, fill, outline=None) -> None:
        """A rectangle from (xa, ya) to (xb, yb); fill may carry an alpha (r, g, b, a)."""
        from PIL import Image, ImageDraw

        (ua, va), (ub, vb) = self.px(xa, ya), self.px(xb, yb)
        box = [min(ua, ub), min(va, vb), max(ua, ub), max(va, vb)]
        if len(fill) == 4:  # translucent: composite so that overlapping bars stay visible
            layer = Image.new("RGBA", self.canvas.size, (0, 0, 0, 0))
            ImageDraw.Draw(layer).rectangle(box, fill=fill)
            self.canvas.alpha_composite(layer)
            self.draw = ImageDraw.Draw(self.canvas)
        else:
            self.draw.rectangle(box, fill=fill)
        if outline is not None:
            self.draw.rectangle(box, outline=outline)

    def text(self, x, y, text, colour=INK) -> None:
        self.draw.text(self.px(x, y), text, fill=colour, font=self.font)

    def legend(self, entries: Sequence[tuple[str, tuple]], where: str = "upper right") -> None:
        left, top, right, bottom = self.box
        width = max(self.draw.textlength(t, font=self.small) for t, _ in entries) + 30
        height = 16 * len(entries) + 6
        u = right - width - 6 if "right" in where else left + 6
        v = top + 6 if "upper" in where else bottom - height - 6
        self.draw.rectangle([u, v, u + width, v + height], fill="white", outline=(160, 160, 160))
        for i, (label, colour) in enumerate(entries):
            y = v + 5 + 16 * i
            self.draw.line([(u + 5, y + 6), (u + 21, y + 6)], fill=colour, width=3)
            self.draw.text((u + 26, y), label, fill=INK, font=self.small)

    def image(self) -> torch.Tensor:
        self.draw.rectangle(self.box, outline=INK)
        return to_tensor(self.canvas)


def line_chart(x, series: dict, title: str, xlabel: str, ylabel: str, ylim=(0.0, 1.0)):
    """One line with markers per entry of series ({name: y values at x}), a legend."""
    xs = [float(v) for v in x]
    span = (max(xs) - min(xs)) or 1.0
    ax = Axes((min(xs) - 0.03 * span, max(xs) + 0.03 * span), ylim, title, xlabel, ylabel)
    entries = []
    for i, (name, ys) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        ax.polyline(xs, [float(v) for v in ys], colour)
        entries.append((name, colour))
    ax.legend(entries)
    return ax.image()


def histograms(series: dict, title: str, xlabel: str, bins: int = 30, notes=()) -> torch.Tensor:
    """Overlaid, translucent histograms of each set's values ({name: 1-d tensor}), each
    normalised to fractions (sets of different sizes compare); `notes` are lines written inside."""
    values = {k: torch.as_tensor(v).detach().double().flatten().cpu() for k, v in series.items()}
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    if high <= low:
        high = low + 1.0
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    fractions = {k: torch.histc(v, bins, low, high) / max(1, len(v)) for k, v in values.items()}
    top = max(float(f.max()) for f in fractions.values()) * 1.1
    ax = Axes((low, high), (0, top), title, xlabel, "share of the set")
    entries = []
    for i, (name, frac) in enumerate(fractions.items()):
        colour = PALETTE[i % len(PALETTE)]
        for j in range(bins):
            if frac[j] > 0:
                ax.bar(edges[j], edges[j + 1], 0, frac[j], (*colour, 90), outline=None)
        steps_x = [float(e) for e in edges for _ in range(2)][1:-1]
        steps_y = [float(f) for f in frac for _ in range(2)]
        ax.polyline(steps_x, steps_y, colour, width=2, markers=False)
        entries.append((f"{name} (n={len(values[name])})", colour))
    ax.legend(
        entries, "upper left" if float(fractions[next(iter(fractions))][-1]) > 0 else "upper right"
    )
    for i, note in enumerate(notes):
        u, v = ax.box[0] + 8, ax.box[1] + 8 + 16 * (len(entries) + 1 + i)
        ax.draw.text((u, v), note, fill=INK, font=ax.font)
    return ax.image()


def reliability_diagram(bins: dict, title: str, ece: float) -> torch.Tensor:
    """Accuracy per confidence bin (blue bars) against the diagonal of perfect calibration, the
    gap to each bin's mean confidence in red, the share of items per bin as a thin grey bar."""
    edges, count = bins["edges"], bins["count"]
    ax = Axes((0, 1), (0, 1), title, "confidence (max softmax)", "accuracy", size=(360, 340))
    share = count / count.sum().clamp(min=1)
    for m in range(len(count)):
        if count[m] == 0:
            continue
        a, b = float(edges[m]), float(edges[m + 1])
        acc, conf = float(bins["accuracy"][m]), float(bins["confidence"][m])
        ax.bar(a, b, 0, acc, (31, 119, 180), outline=(255, 255, 255))
        ax.bar(a, b, min(acc, conf), max(acc, conf), (214, 39, 40, 110), outline=(214, 39, 40))
        ax.bar(a + 0.3 * (b - a), b - 0.3 * (b - a), 0, float(share[m]), (90, 90, 90))
    ax.dashed(0, 0, 1, 1)
    ax.legend(
        [
            ("accuracy", PALETTE[0]),
            ("gap to confidence", PALETTE[1]),
            ("share of items", (90, 90, 90)),
        ],
        "upper left",
    )
    ax.draw.text((ax.box[0] + 8, ax.box[1] + 64), f"ECE = {100 * ece:.2f}%", fill=INK, font=ax.font)
    return ax.image()


def bar_chart(labels: Sequence[str], values, title: str, ylabel: str, note: str = ""):
    """One bar per label (e.g. the class histogram of a GAN's samples)."""
    values = [float(v) for v in values]
    k = len(values)
    ax = Axes((0, k), (0, max(values + [1e-9]) * 1.15), title, "", ylabel, (520, 330), xticks=[])
    for i, v in enumerate(values):
        ax.bar(i + 0.15, i + 0.85, 0, v, PALETTE[0])
        u, _ = ax.px(i + 0.5, 0)
        name = str(labels[i])[:9]
        ax.draw.text(
            (u - ax.draw.textlength(name, font=ax.small) / 2, ax.box[3] + 4),
            name,
            fill=INK,
            font=ax.small,
        )
    if note:
        ax.draw.text((ax.box[0] + 8, ax.box[1] + 6), note, fill=INK, font=ax.font)
    return ax.image()


def heat(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) values in [0, 1] -> (N, 3, H, W) colours black -> red -> yellow -> white."""
    m = maps.detach().float().clamp(0, 1)
    r = (3 * m).clamp(0, 1)
    g = (3 * m - 1).clamp(0, 1)
    b = (3 * m - 2).clamp(0, 1)
    return torch.stack([r, g, b], 1)


def captioned_grid(
    tiles: Sequence[Sequence[torch.Tensor]],
    captions: Sequence[Sequence[Sequence[tuple[str, tuple]]]],
    column_titles: Sequence[str] = (),
    min_width: int = 84,
    caption_span: int = 1,
) -> torch.Tensor:
    """Rows of (C, H, W) tiles in [0, 1], each with caption lines [(text, colour), ...] below it
    (cut to the width of `caption_span` tiles: leave the next ones uncaptioned), and an optional
    title over each column. Tiles are enlarged (nearest) to >= min_width px."""
    from PIL import Image, ImageDraw

    fnt = font(12)
    h, w = tiles[0][0].shape[-2:]
    scale = max(1, math.ceil(min_width / w))
    tw, th, pad = w * scale, h * scale, 6
    lines = max(len(c) for row in captions for c in row) if captions else 0
    cap, head = 13 * lines + 4, 16 if column_titles else 0
    cols = max(len(r) for r in tiles)
    canvas = Image.new(
        "RGB", (cols * (tw + pad) + pad, head + len(tiles) * (th + cap + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(column_titles):
        draw.text((pad + j * (tw + pad), 3), str(title)[: tw // 6], fill=INK, font=fnt)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            tile = tile.detach().float().clamp(0, 1).cpu()
            tile = tile.expand(3, -1, -1) if tile.shape[0] == 1 else tile[:3]
            pixels = tile.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            x0, y0 = pad + j * (tw + pad), head + pad + i * (th + cap + pad)
            canvas.paste(Image.fromarray(pixels).resize((tw, th), Image.NEAREST), (x0, y0))
            for k, (text, colour) in enumerate(captions[i][j] if captions else []):
                while text and draw.textlength(text, font=fnt) > caption_span * (tw + pad) - pad:
                    text = text[:-1]
                draw.text((x0 + 1, y0 + th + 2 + 13 * k), text, fill=colour, font=fnt)
    return to_tensor(canvas)
