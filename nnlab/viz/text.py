"""The text family's drawing: attention heat maps (PIL -> (3, H, W) float tensors in [0, 1]) and
Markdown for TensorBoard's TEXT tab.

    attention_image, stack      attention weights (target x source words) as a heat map; images
                                stacked top to bottom
    code_block, markdown_table  Markdown for the TEXT tab (samples, translations, errors)
"""

from __future__ import annotations

import torch

from nnlab.viz import to_tensor


def _text_font(size: int = 12):
    """DejaVu Sans where installed (it has every accented letter), else Pillow's own font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def attention_image(
    weights: torch.Tensor, source: list[str], target: list[str], caption: str = ""
) -> torch.Tensor:
    """The attention weights (len(target), len(source)) as a heat map: one row per target token
    (left), one column per source token (top, written upwards), white (0) to dark blue (1), the
    row's largest weight outlined in red, and the caption above."""
    from PIL import Image, ImageDraw

    font, small = _text_font(12), _text_font(10)
    w = weights.detach().float().cpu()[: len(target), : len(source)]
    rows, cols = w.shape
    cell = 20
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    length = lambda words, f: int(max((probe.textlength(s, font=f) for s in words), default=0))  # noqa: E731
    left, top = length(target, font) + 10, length(source, font) + 10
    head = 18 if caption else 4
    width = max(left + cols * cell + 6, int(probe.textlength(caption, font=small)) + 8)
    canvas = Image.new("RGB", (width, head + top + rows * cell + 6), "white")
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((4, 3), caption, fill="black", font=small)
    for j, word in enumerate(source):  # column labels, rotated to read bottom-up
        label = Image.new("RGB", (top, cell), "white")
        ImageDraw.Draw(label).text((2, 3), word, fill="black", font=font)
        canvas.paste(label.rotate(90, expand=True), (left + j * cell, head))
    y0 = head + top
    for i, word in enumerate(target):
        draw.text((4, y0 + i * cell + 3), word, fill="black", font=font)
        best = int(w[i].argmax()) if cols else -1
        for j in range(cols):
            v = float(w[i, j])
            colour = (int(255 * (1 - v)), int(255 * (1 - 0.75 * v)), int(255 * (1 - 0.35 * v)))
            x = left + j * cell
            box = [x, y0 + i * cell, x + cell - 1, y0 + (i + 1) * cell - 1]
            draw.rectangle(box, fill=colour, outline=(225, 225, 225))
            if j == best:
                draw.rectangle(box, outline=(210, 0, 0), width=2)
    return to_tensor(canvas)


def code_block(text: str) -> str:
    """Text shown verbatim in the TEXT tab (Markdown): every line indented by four spaces."""
    return "\n".join("    " + line for line in text.split("\n"))


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("|", "\\|").replace("\n", " \u21b5 ")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells have their pipes escaped and their new lines shown as a return
    arrow, and are cut at 300 characters."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def stack(images: list[torch.Tensor], pad: int = 6) -> torch.Tensor:
    """(3, H_i, W_i) images one below the other on white, left-aligned: one (3, H, W) image."""
    width = max(int(im.shape[2]) for im in images)
    height = sum(int(im.shape[1]) for im in images) + pad * (len(images) - 1)
    out = torch.ones(3, height, width)
    y = 0
    for im in images:
        out[:, y : y + im.shape[1], : im.shape[2]] = im
        y += int(im.shape[1]) + pad
    return out
