"""The sequence family's figures, drawn with PIL into (3, H, W) float tensors in [0, 1]:

line_chart        axes, ticks, a legend; linear or log10 y (the building block)
forecast_image    history, the truth over the forecast span, the model and the baselines
grad_flow_image   ||dL/dh_t|| against the steps before the end (log scale): BPTT's vanishing
                  (or exploding) gradients, one line per cell or per epoch
gates_image       an LSTM's (or GRU's) gate activations over time for one sequence: a heat map
                  per gate (units x steps) and the gates' means over time
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nnlab import viz

PALETTE = viz.PALETTE  # the house's line colours (tab10)
to_tensor = viz.to_tensor


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:.10g}" if float(v).is_integer() else f"{v:.3g}"


@dataclass
class _Frame:
    """The plot area in pixels (left, top, width, height) and the data range it shows."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x, y):
        """Data (x, y) -> pixel (x, y)."""
        return (
            self.left + (x - self.x0) / (self.x1 - self.x0) * self.width,
            self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.height,
        )


def line_chart(
    lines: dict[str, tuple],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_y: bool = False,
    size: tuple[int, int] = (640, 320),
    vlines: dict[str, float] | None = None,
    colours: dict[str, tuple] | None = None,
    left: int = 64,
) -> torch.Tensor:
    """lines: {name: (x, y)} (sequences of numbers; NaN breaks a line). vlines: {label: x}
    dashed vertical markers. The legend is a row above the plot. Returns a (3, H, W) image in
    [0, 1]."""
    from PIL import Image, ImageDraw

    font = _font()
    w, h = size
    right, top, bottom = 16, 38, 40
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    data = _chart_data(lines, log_y)
    frame = _Frame(left, top, w - left - right, h - top - bottom, *_data_range(data, vlines))
    _draw_axes(draw, font, frame, log_y)
    for label, xv in (vlines or {}).items():
        _draw_vline(draw, font, frame, xv, label)
    palette = {
        name: (colours or {}).get(name, PALETTE[k % len(PALETTE)]) for k, name in enumerate(data)
    }
    for name, (xs, ys) in data.items():
        points = [frame.px(x, y) if np.isfinite(y) else None for x, y in zip(xs, ys)]
        _draw_broken_line(draw, points, palette[name])
    _draw_legend(draw, font, palette, left, top)
    _draw_titles(canvas, draw, font, frame, title, xlabel, ylabel)
    return to_tensor(canvas)


def _chart_data(lines: dict[str, tuple], log_y: bool) -> dict[str, tuple]:
    """{name: (x, y)} as flat float64 arrays; on a log axis y becomes log10 y (NaN where <= 0)."""
    data = {}
    for name, (xs, ys) in lines.items():
        xs, ys = np.asarray(xs, np.float64).ravel(), np.asarray(ys, np.float64).ravel()
        if log_y:
            ys = np.where(ys > 0, np.log10(np.where(ys > 0, ys, 1)), np.nan)
        data[name] = (xs, ys)
    return data


def _data_range(data: dict[str, tuple], vlines: dict[str, float] | None) -> tuple[float, ...]:
    """(x0, x1, y0, y1) of the drawn points and markers; never empty, y padded by 5%."""
    xs_all = np.concatenate(  # the x range of the points that are drawn (finite y)
        [d[0][np.isfinite(d[1])] for d in data.values()] + [np.array(list((vlines or {}).values()))]
    )
    ys_all = np.concatenate([d[1] for d in data.values()])
    ys_all = ys_all[np.isfinite(ys_all)]
    x0, x1 = (float(xs_all.min()), float(xs_all.max())) if xs_all.size else (0.0, 1.0)
    y0, y1 = (float(ys_all.min()), float(ys_all.max())) if ys_all.size else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    return x0, x1, y0 - pad, y1 + pad


def _draw_axes(draw, font, f: _Frame, log_y: bool) -> None:
    """The frame, horizontal grid lines with y labels, x ticks with labels."""
    left, top, pw, ph = f.left, f.top, f.width, f.height
    draw.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    for yt in nice_ticks(f.y0, f.y1):
        _, yy = f.px(f.x0, yt)
        draw.line([left, yy, left + pw, yy], fill=(235, 235, 235))
        text = _label(10**yt) if log_y else _label(yt)
        draw.text(
            (left - 6 - draw.textlength(text, font=font), yy - 6), text, fill="black", font=font
        )
    for xt in nice_ticks(f.x0, f.x1, 8):
        xx, _ = f.px(xt, f.y0)
        draw.line([xx, top + ph, xx, top + ph + 4], fill="black")
        text = _label(xt)
        draw.text(
            (xx - draw.textlength(text, font=font) / 2, top + ph + 6), text, fill="black", font=font
        )


def _draw_vline(draw, font, f: _Frame, xv: float, label: str) -> None:
    """A dashed vertical marker at x = xv, labelled at the top."""
    xx, _ = f.px(xv, f.y0)
    for yy in range(f.top, f.top + f.height, 8):
        draw.line([xx, yy, xx, min(yy + 4, f.top + f.height)], fill=(90, 90, 90))
    draw.text((xx + 3, f.top + 2), label, fill=(90, 90, 90), font=font)


def _draw_broken_line(draw, points: list, colour) -> None:
    """Pixel points with None where y is missing: a polyline per run, a dot for a lone point."""
    run: list = []
    for p in [*points, None]:
        if p is None:
            if len(run) > 1:
                draw.line(run, fill=colour, width=2)
            elif len(run) == 1:
                draw.ellipse(
                    [run[0][0] - 2, run[0][1] - 2, run[0][0] + 2, run[0][1] + 2], fill=colour
                )
            run = []
        else:
            run.append(p)


def _draw_legend(draw, font, palette: dict[str, tuple], left: float, top: float) -> None:
    """The legend: one row above the plot, a colour swatch and the name per line."""
    lx = left
    for name, colour in palette.items():
        draw.line([lx, top - 8, lx + 18, top - 8], fill=colour, width=3)
        draw.text((lx + 22, top - 14), name, fill="black", font=font)
        lx += 22 + draw.textlength(name, font=font) + 14


def _draw_titles(canvas, draw, font, f: _Frame, title: str, xlabel: str, ylabel: str) -> None:
    """The title above the legend, the x label under the axis, the y label rotated beside it."""
    from PIL import Image, ImageDraw

    draw.text((f.left, 6), title, fill="black", font=font)
    draw.text(
        (f.left + f.width / 2 - draw.textlength(xlabel, font=font) / 2, canvas.height - 14),
        xlabel,
        fill="black",
        font=font,
    )
    if ylabel:  # rotated, along the y axis
        tw = int(draw.textlength(ylabel, font=font)) + 4
        label = Image.new("RGB", (tw, 12), "white")
        ImageDraw.Draw(label).text((2, 0), ylabel, fill=(90, 90, 90), font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (2, int(f.top + f.height / 2 - label.height / 2)))


def forecast_image(
    x: np.ndarray,
    series: np.ndarray,
    span_start: int,
    forecasts: dict[str, np.ndarray],
    title: str = "",
    ylabel: str = "",
    show_from: int = 0,
    xlabel: str = "time",
) -> torch.Tensor:
    """The series (history up to span_start in grey, the truth after it in black) and each
    forecast of the span [span_start, span_start + len) in colour."""
    x, series = np.asarray(x, np.float64), np.asarray(series, np.float64)
    lines = {
        "history": (x[show_from : span_start + 1], series[show_from : span_start + 1]),
        "truth": (x[span_start:], series[span_start:]),
    }
    colours = {"history": (150, 150, 150), "truth": (0, 0, 0)}
    for k, (name, values) in enumerate(forecasts.items()):
        values = np.asarray(values, np.float64).ravel()
        lines[name] = (x[span_start : span_start + len(values)], values)
        colours[name] = PALETTE[k % len(PALETTE)]
    return line_chart(
        lines, title, xlabel, ylabel, vlines={"forecast from here": x[span_start]}, colours=colours
    )


def forecast_figure(data, span: dict, pred: torch.Tensor, name: str, stage: str) -> torch.Tensor:
    """The forecast plot of a span of a SeriesDataModule (`data.span(stage)`): the model's
    forecasts `pred` (n_origins, H) under `name`, and the span's baselines."""
    n = span["stop"] - span["start"]
    lines = {name: pred.flatten()[:n].numpy()}
    lines.update({k: v.flatten()[:n].numpy() for k, v in span["baselines"].items()})
    how = (
        "one-step-ahead forecasts, each from the true history"
        if data.horizon == 1
        else f"{data.horizon}-step forecasts from every {data.horizon}th point"
    )
    return forecast_image(
        np.asarray(data.x)[: span["stop"]],
        data.series.y.cpu().numpy()[: span["stop"]],
        span["start"],
        lines,
        f"{data.name}: {stage} span, {how}",
        data.units,
        show_from=max(0, span["start"] - max(n, 3 * data.period)),  # as much history as span
        xlabel="year" if data.format == "csv" else "step",
    )


def grad_flow_image(norms: dict[str, np.ndarray], title: str = "") -> torch.Tensor:
    """{name: ||dL/dh_t|| for t = 0..T-1} against t - (T-1), the steps before the last one (where
    the loss reads the state), on a log scale: a flat line carries the gradient back through
    time, a falling one to the left shows it vanishing."""
    lines = {}
    for name, v in norms.items():
        v = np.asarray(v, np.float64).ravel()
        lines[name] = (np.arange(len(v)) - (len(v) - 1), v)
    return line_chart(
        lines,
        title or "BPTT: mean ||dL/dh_t|| of the top layer, per time step",
        "t - T (steps before the last; the loss reads h at 0)",
        "||dL/dh_t||",
        log_y=True,
    )


def _heat(values: np.ndarray, width: int, height: int, lo: float, hi: float):
    """(rows, cols) -> a PIL image width x height, white (lo) -> dark blue (hi)."""
    from PIL import Image

    v = np.clip((np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.stack([255 * (1 - 0.85 * v), 255 * (1 - 0.55 * v), 255 - 80 * v], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8)).resize((width, height), Image.NEAREST)


def gates_image(
    inputs: np.ndarray, gates: dict[str, np.ndarray], title: str = "", max_units: int = 32
) -> torch.Tensor:
    """One sequence: its input channels (steps x channels, scaled per channel) and each gate's
    activations (steps x units, 0 white .. 1 dark blue; the first `max_units` units), then the
    gates' means over the units at every step as lines."""
    from PIL import Image, ImageDraw

    font = _font()
    inputs = np.asarray(inputs, np.float64)
    steps = len(inputs)
    left, width = 110, 520
    rows = _gate_rows(inputs, gates, max_units)
    heights = [max(24, min(96, 3 * r[1].shape[0])) for r in rows]
    chart_img = _gate_means_chart(gates, steps, left, width)
    total = 24 + sum(hh + 8 for hh in heights) + chart_img.height
    canvas = Image.new("RGB", (left + width + 16, total), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), title or f"gate activations over {steps} steps", fill="black", font=font)
    y = 24
    for (label, values, rng), hh in zip(rows, heights):
        canvas.paste(_heat(values, width, hh, *rng), (left, y))
        draw.rectangle([left - 1, y - 1, left + width, y + hh], outline=(160, 160, 160))
        draw.text((4, y + hh / 2 - 6), label, fill="black", font=font)
        y += hh + 8
    canvas.paste(chart_img, (0, y))
    return to_tensor(canvas)


def _gate_rows(inputs: np.ndarray, gates: dict[str, np.ndarray], max_units: int) -> list[tuple]:
    """The heat maps' rows: (label, values (rows x steps), (lo, hi)); the inputs first, each
    channel scaled to its own range, then every gate (tanh ones -1..1, sigmoid ones 0..1)."""
    values = inputs.T
    lo_c = values.min(1, keepdims=True)
    span = np.maximum(values.max(1, keepdims=True) - lo_c, 1e-12)
    rows = [("input (per channel)", (values - lo_c) / span, (0.0, 1.0))]
    for name, g in gates.items():
        g = np.asarray(g, np.float64)[:, :max_units]
        rng = (-1.0, 1.0) if name in ("cell", "new") else (0.0, 1.0)  # tanh | sigmoid
        rows.append((f"{name} gate ({rng[0]:g}..{rng[1]:g})", g.T, rng))
    return rows


def _gate_means_chart(gates: dict[str, np.ndarray], steps: int, left: int, width: int):
    """The gates' means over the units against the step, as a PIL image under the heat maps."""
    from PIL import Image

    chart = line_chart(
        {
            f"mean {n}": (np.arange(steps), np.asarray(g, np.float64).mean(1))
            for n, g in gates.items()
        },
        "mean activation over the units, per step",
        "step t",
        "",
        size=(left + width + 16, 220),
        left=left,
    )
    return Image.fromarray((chart.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
