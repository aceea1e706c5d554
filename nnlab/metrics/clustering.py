"""What an autoencoder's codes know about the classes: k-means on the codes, scored against the
labels ("autoencoders for learning clusters of data", Hinton & Salakhutdinov 2006).

    k-means     Lloyd's algorithm from k-means++ seeds (Arthur & Vassilvitskii 2007), the best of
                n_init restarts by inertia sum_i |x_i - c_(a_i)|^2
    accuracy    max over one-to-one maps m of clusters to classes of mean(m(a_i) == y_i), the map
                found by the Hungarian algorithm on the contingency table (Kuhn 1955)
    NMI         I(Y; A) / ((H(Y) + H(A)) / 2)   (the arithmetic normalisation, as scikit-learn)
    ARI         the Rand index corrected for chance (Hubert & Arabie 1985): 0 for random labels
    entropy     H of a label histogram in nats: log k when all k labels are equally frequent
                (a GAN's mode coverage: the class histogram of its samples, as LeNet sees them)
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment


def _sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """|x_i - c_j|^2 as (N, k), without an (N, k, d) intermediate."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)
    return d.clamp(min=0)


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    first = torch.randint(len(x), (1,), generator=g, device="cpu").item()
    centres = [x[first]]
    dist = _sq_distances(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        weights = dist.cpu().double()
        if float(weights.sum()) <= 0:  # fewer distinct points than k: repeat one
            weights = torch.ones_like(weights)
        nxt = torch.multinomial(weights, 1, generator=g).item()
        centres.append(x[nxt])
        dist = torch.minimum(dist, _sq_distances(x, x[nxt : nxt + 1]).squeeze(1))
    return torch.stack(centres)


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 100, tol: float = 1e-6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(assignments (N,) int64, centres (k, d), inertia): the best of n_init runs, on x's device."""
    x = x.detach().float().flatten(1)
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k} for N={len(x)}")
    g = torch.Generator().manual_seed(int(seed))
    tol = tol * float(x.var(0).sum())  # relative to the data's total variance
    best = None
    for _ in range(int(n_init)):
        centres = _kmeans_pp(x, k, g)
        for _ in range(int(max_iter)):
            assign = _sq_distances(x, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            # an emptied cluster keeps its centre
            new = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
            shift = float((new - centres).pow(2).sum())
            centres = new
            if shift <= tol:
                break
        dist = _sq_distances(x, centres)
        inertia, assign = dist.min(1)
        inertia = float(inertia.sum())
        if best is None or inertia < best[2]:
            best = (assign, centres, inertia)
    return best


def contingency(true: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Counts n[i, j] of items with the i-th true label and the j-th predicted one (float64)."""
    _, t = torch.unique(true.detach().cpu(), return_inverse=True)
    _, p = torch.unique(pred.detach().cpu(), return_inverse=True)
    table = torch.zeros(int(t.max()) + 1, int(p.max()) + 1, dtype=torch.float64)
    table.index_put_((t, p), torch.ones(len(t), dtype=torch.float64), accumulate=True)
    return table


def cluster_accuracy(true: torch.Tensor, pred: torch.Tensor) -> float:
    """The accuracy of the best one-to-one map of clusters to labels (Hungarian algorithm)."""
    table = contingency(true, pred)
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def entropy(counts: torch.Tensor) -> float:
    """H(p) in nats of a histogram of counts."""
    counts = counts.detach().double().flatten()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def normalized_mutual_info(true: torch.Tensor, pred: torch.Tensor) -> float:
    table = contingency(true, pred)
    n = table.sum()
    pxy = table / n
    px, py = pxy.sum(1, keepdim=True), pxy.sum(0, keepdim=True)
    nz = pxy > 0
    mi = float((pxy[nz] * (pxy[nz] / (px @ py)[nz]).log()).sum())
    h = (entropy(table.sum(1)) + entropy(table.sum(0))) / 2
    return 1.0 if h == 0 else max(0.0, mi / h)


def adjusted_rand_index(true: torch.Tensor, pred: torch.Tensor) -> float:
    table = contingency(true, pred)

    def pairs(v):
        return float((v * (v - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(table.sum().view(1))
    top = (rows + cols) / 2
    if math.isclose(top, expected):  # one cluster and one class (or all singletons): agreement
        return 1.0
    return (index - expected) / (top - expected)


def clustering_scores(true: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    """{'acc', 'nmi', 'ari'} of a clustering against the labels."""
    return {
        "acc": cluster_accuracy(true, pred),
        "nmi": normalized_mutual_info(true, pred),
        "ari": adjusted_rand_index(true, pred),
    }


def clustering_report(
    views: dict[str, torch.Tensor], labels: torch.Tensor, k: int, n_init: int = 3, seed: int = 0
) -> dict[str, float]:
    """k-means with k clusters on each view of the same items ({'codes': ..., 'pixels': ...,
    'pca': ...}), scored against the labels: {'<view>_acc', '<view>_nmi', '<view>_ari'}."""
    out = {}
    for name, x in views.items():
        assign, _, _ = kmeans(x, k, n_init=n_init, seed=seed)
        out.update({f"{name}_{key}": v for key, v in clustering_scores(labels, assign).items()})
    return out


def class_histogram(predictions: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """(counts per class, entropy in nats) of predicted classes: log k when every class is
    predicted equally often (a GAN's mode coverage as a classifier sees its samples)."""
    counts = torch.bincount(predictions.detach().flatten().cpu().long(), minlength=k)[:k]
    return counts, entropy(counts)
