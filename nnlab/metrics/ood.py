"""Out-of-distribution detection scores and their AUROC.

max-softmax   s(x) = max_k softmax(f(x))_k        (Hendrycks & Gimpel 2017): in-distribution
              images should get higher scores than images of another data set
likelihood    s(x) = log p(x) of a generative model (Nalisnick et al. 2019 found it can be
              higher on the *other* data set: an AUROC below 0.5)
AUROC         P(s(in) > s(out)) + P(s(in) = s(out)) / 2: the Mann-Whitney U statistic over
              n_in * n_out; 1 = perfect separation, 0.5 = chance
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The detector's score per image: the largest class probability."""
    return F.softmax(logits.detach().float(), dim=1).max(1).values


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve of 'in-distribution' = positive, by ranks (ties count half)."""
    a = np.asarray(torch.as_tensor(scores_in).detach().double().flatten().cpu())
    b = np.asarray(torch.as_tensor(scores_out).detach().double().flatten().cpu())
    if len(a) == 0 or len(b) == 0:
        raise ValueError("AUROC needs at least one score on each side")
    ranks = rankdata(np.concatenate([a, b]))  # average ranks for ties, 1-based
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(b)))
