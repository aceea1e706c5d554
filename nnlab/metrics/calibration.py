"""Calibration: does a classifier's confidence match its accuracy? (Guo et al. 2017, "On
Calibration of Modern Neural Networks").

    confidence  c_i = max_k softmax(z_i)_k,  prediction  argmax_k z_i
    bins        B_m = {i : c_i in ((m-1)/M, m/M]},  m = 1..M  (M = 15, equal width)
    ECE         = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|
    temperature scaling: softmax(z / T), with T > 0 fitted on held-out data by minimising the
                negative log-likelihood; it leaves every prediction (argmax) as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reliability_bins(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
) -> dict[str, torch.Tensor]:
    """Per bin ((m-1)/M, m/M]: 'count', mean 'confidence', 'accuracy' (0 where empty), 'edges'."""
    conf = confidences.detach().double().flatten().cpu()
    hits = correct.detach().double().flatten().cpu()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf, edges[1:-1], right=False)  # edges[m-1] < c <= edges[m]
    count = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=n_bins)
    hit_sum = torch.bincount(index, weights=hits, minlength=n_bins)
    safe = count.clamp(min=1)
    return {
        "count": count,
        "confidence": conf_sum / safe,
        "accuracy": hit_sum / safe,
        "edges": edges,
    }


def expected_calibration_error(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
) -> float:
    """ECE from per-item confidences and 0/1 correctness (M equal-width bins)."""
    bins = reliability_bins(confidences, correct, n_bins)
    n = bins["count"].sum().clamp(min=1)
    return float((bins["count"] / n * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def confidence_and_correct(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max softmax probability of logits / T and whether the argmax is the label."""
    probs = F.softmax(logits.detach().float() / float(temperature), dim=1)
    conf, pred = probs.max(1)
    return conf, (pred == labels).float()


def ece_of_logits(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15, temperature: float = 1.0
) -> float:
    return expected_calibration_error(*confidence_and_correct(logits, labels, temperature), n_bins)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """T minimising the NLL of softmax(logits / T) on (held-out) data.

    The NLL is convex in b = 1/T (a log-sum-exp of functions linear in b, minus a linear term),
    so L-BFGS on b from b = 1 finds the global minimum."""
    with torch.inference_mode(False), torch.enable_grad():  # also inside Lightning's test stage
        z, y = logits.detach().double().cpu().clone(), labels.detach().cpu().clone()
        b = torch.ones((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z * b, y)
            loss.backward()
            return loss

        opt.step(closure)
    b_value = float(b.detach())
    if not b_value > 0:  # a degenerate set (e.g. every prediction wrong): leave the logits alone
        return 1.0
    return 1.0 / b_value


def calibration_report(
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    val_logits: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    n_bins: int = 15,
) -> tuple[dict[str, float], dict[str, dict]]:
    """ECE and NLL of the test logits; with validation logits also the temperature fitted on them
    and the test ECE and NLL after scaling. Returns (metrics, {'T=1': bins, 'T=t': bins})."""
    z, y = test_logits.detach().float().cpu(), test_labels.detach().cpu()
    metrics = {"ece": ece_of_logits(z, y, n_bins), "nll": float(F.cross_entropy(z, y))}
    bins = {"T = 1": reliability_bins(*confidence_and_correct(z, y), n_bins)}
    if val_logits is not None:
        t = fit_temperature(val_logits, val_labels)
        metrics.update(
            temperature=t,
            ece_scaled=ece_of_logits(z, y, n_bins, t),
            nll_scaled=float(F.cross_entropy(z / t, y)),
        )
        bins[f"T = {t:.2f}"] = reliability_bins(*confidence_and_correct(z, y, t), n_bins)
    return metrics, bins
