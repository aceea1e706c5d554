"""Forecasting: the spans, the error measures and the classical baselines every forecaster run
reports beside its own numbers (Hyndman & Athanasopoulos, "Forecasting: Principles and
Practice", 3rd ed., ch. 5.2 and 9.3).

A span [start, stop) of a series is forecast from origins start, start+H, start+2H, ...: each
origin sees the true history before it and predicts the next H values, scored up to the span's
end, so every point of the span is forecast exactly once (H=1: one-step-ahead, rolling).

    persistence      y^(o+h) = y(o-1)                          (the last value, "naive")
    seasonal naive   y^(o+h) = y(o+h - m*(1 + h//m))           (the same season of the last year)
    AR(p)            y(t) = c + a1 y(t-1) + ... + ap y(t-p), least squares on the training
                     span, forecast recursively (each prediction fed back in)
"""

from __future__ import annotations

import torch


def origins(start: int, stop: int, horizon: int) -> list[int]:
    """The forecast origins of the span [start, stop): start, start+H, ... (< stop)."""
    return list(range(start, stop, horizon))


def span_targets(y: torch.Tensor, start: int, stop: int, horizon: int) -> torch.Tensor:
    """The true values of the span, origin by origin: (n_origins, H), NaN past the span's end."""
    out = torch.full((len(origins(start, stop, horizon)), horizon), float("nan"), dtype=y.dtype)
    for k, o in enumerate(origins(start, stop, horizon)):
        n = min(horizon, stop - o)
        out[k, :n] = y[o : o + n]
    return out


def errors(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """MAE, RMSE and MAPE (in %) over the entries where `truth` is not NaN."""
    keep = ~torch.isnan(truth)
    p, t = pred[keep].double(), truth[keep].double()
    diff = p - t
    return {
        "mae": diff.abs().mean(),
        "rmse": diff.pow(2).mean().sqrt(),
        "mape": (diff.abs() / t.abs().clamp_min(1e-8)).mean() * 100,
    }


def persistence(y: torch.Tensor, origin_list: list[int], horizon: int) -> torch.Tensor:
    """(n_origins, H): the last value before each origin, repeated."""
    return torch.stack([y[o - 1].expand(horizon) for o in origin_list])


def seasonal_naive(y: torch.Tensor, origin_list: list[int], horizon: int, period: int):
    """(n_origins, H): each step takes the value one (or more) whole periods before it that the
    origin has already seen."""
    if period < 1:
        raise ValueError("the seasonal period must be >= 1")
    h = torch.arange(horizon)
    back = period * (1 + h // period)
    return torch.stack([y[o + h - back] for o in origin_list])


def fit_ar(y: torch.Tensor, p: int) -> torch.Tensor:
    """Least-squares AR(p) with an intercept on y: coefficients [c, a1, ..., ap] (float64)."""
    y = y.double()
    if len(y) <= 2 * p + 1:
        raise ValueError(f"AR({p}) needs more than {2 * p + 1} training points, got {len(y)}")
    lags = torch.stack([y[p - k : len(y) - k] for k in range(1, p + 1)], dim=1)
    design = torch.cat([torch.ones(len(lags), 1, dtype=y.dtype), lags], dim=1)
    return torch.linalg.lstsq(design, y[p:].unsqueeze(1)).solution.squeeze(1)


def ar_forecast(y: torch.Tensor, coef: torch.Tensor, origin_list: list[int], horizon: int):
    """(n_origins, H): recursive AR forecasts from each origin (true history before it)."""
    p = len(coef) - 1
    out = []
    for o in origin_list:
        hist = list(y[o - p : o].double())
        preds = []
        for _ in range(horizon):
            value = coef[0] + sum(coef[k] * hist[-k] for k in range(1, p + 1))
            preds.append(value)
            hist.append(value)
        out.append(torch.stack(preds))
    return torch.stack(out).to(y.dtype)


def baselines(
    y: torch.Tensor, train_stop: int, start: int, stop: int, horizon: int, period: int, ar_p: int
) -> dict[str, torch.Tensor]:
    """The three baselines' forecasts of the span [start, stop): {name: (n_origins, H)}.
    The AR model is fitted on y[:train_stop] only."""
    o = origins(start, stop, horizon)
    y = y.double()
    return {
        "persistence": persistence(y, o, horizon),
        "seasonal_naive": seasonal_naive(y, o, horizon, period),
        f"ar{ar_p}": ar_forecast(y, fit_ar(y[:train_stop], ar_p), o, horizon),
    }
