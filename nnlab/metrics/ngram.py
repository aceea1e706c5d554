"""Character n-gram language models with interpolated Kneser-Ney smoothing: the baseline that a
character RNN must beat, in bits per character on the same split.

Interpolated Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998, eq. 17 with one discount per
order): for a history h of n-1 characters and its shortened history h',

    P_n(w | h) = max(c(hw) - D, 0) / c(h) + D * N1+(h .) / c(h) * P_{n-1}(w | h')

where the highest order counts c are raw counts and every lower order uses continuation counts
c(hw) = N1+(. hw), the number of distinct characters seen before hw. N1+(h .) is the number of
distinct characters seen after h, D = n1 / (n1 + 2 n2) from the counts of counts, P_0 is uniform
over the vocabulary, and a history never seen falls back to the lower order entirely. Everything
is counted with numpy over integer-coded n-grams (one int64 per n-gram), a few seconds for the
2.5 MB fortunes corpus.
"""

from __future__ import annotations

import math

import numpy as np


def _ngram_ids(codes: np.ndarray, n: int, v: int) -> np.ndarray:
    """The id of every n-gram of `codes` (positions n-1...): sum_j codes[i+j] * v^(n-1-j)."""
    ids = np.zeros(len(codes) - n + 1, dtype=np.int64)
    for j in range(n):
        ids = ids * v + codes[j : len(codes) - n + 1 + j]
    return ids


class _Table:
    """Counts of the n-grams of one order, their contexts' totals and distinct followers."""

    def __init__(self, ids: np.ndarray, counts: np.ndarray, v: int):
        self.ids, self.counts = ids, counts.astype(np.float64)  # ids sorted (np.unique)
        ctx = ids // v
        self.ctx, first = np.unique(ctx, return_index=True)
        self.ctx_total = np.add.reduceat(self.counts, first)
        self.ctx_types = np.diff(np.append(first, len(ids))).astype(np.float64)
        n1, n2 = (counts == 1).sum(), (counts == 2).sum()
        self.discount = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5

    @staticmethod
    def _lookup(keys: np.ndarray, table: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(table, keys).clip(max=len(table) - 1)
        return np.where(table[pos] == keys, values[pos], 0.0) if len(table) else keys * 0.0

    def prob(self, ids: np.ndarray, lower: np.ndarray, v: int) -> np.ndarray:
        """P(w | h) for the n-gram ids given P_{n-1}(w | h') (`lower`), by the formula above."""
        c = self._lookup(ids, self.ids, self.counts)
        total = self._lookup(ids // v, self.ctx, self.ctx_total)
        types = self._lookup(ids // v, self.ctx, self.ctx_types)
        d = self.discount
        seen = total > 0
        safe = np.where(seen, total, 1.0)
        p = np.maximum(c - d, 0.0) / safe + d * types / safe * lower
        return np.where(seen, p, lower)


class KneserNeyLM:
    """Character n-gram models of every order 1..max_order, fitted on integer-coded text."""

    def __init__(self, train_codes, vocab_size: int, max_order: int = 5):
        codes = np.asarray(train_codes, dtype=np.int64)
        if max_order < 1:
            raise ValueError("an n-gram model needs max_order >= 1")
        if vocab_size**max_order >= 2**62:
            raise ValueError(f"{vocab_size}^{max_order} n-grams do not fit in int64 ids")
        if len(codes) < max_order:
            raise ValueError(f"{len(codes)} training characters are too few for {max_order}-grams")
        self.v, self.max_order = int(vocab_size), int(max_order)
        raw = [
            np.unique(_ngram_ids(codes, n, self.v), return_counts=True)
            for n in range(1, max_order + 1)
        ]
        self.raw = [_Table(ids, c, self.v) for ids, c in raw]
        # continuation counts of order n: the distinct left extensions of each n-gram, read off the
        # (n+1)-gram types (the (n+1)-gram id modulo v^n is its last n characters)
        self.cont = []
        for n in range(1, max_order):
            suffix = raw[n][0] % self.v**n
            ids, c = np.unique(suffix, return_counts=True)
            self.cont.append(_Table(ids, c, self.v))

    def probs(self, codes) -> dict[int, np.ndarray]:
        """{order: P(codes[i] | the characters before it) for every position i}; the first
        positions use the shorter histories they have."""
        codes = np.asarray(codes, dtype=np.int64)
        out, lower = {}, np.full(len(codes), 1.0 / self.v)  # P_0: uniform
        for n in range(1, self.max_order + 1):
            p_top = lower.copy()  # positions without n-1 characters of history keep P_{n-1}
            p_cont = lower.copy()
            if len(codes) >= n:
                ids = _ngram_ids(codes, n, self.v)
                p_top[n - 1 :] = self.raw[n - 1].prob(ids, lower[n - 1 :], self.v)
                if n < self.max_order:
                    p_cont[n - 1 :] = self.cont[n - 1].prob(ids, lower[n - 1 :], self.v)
            out[n], lower = p_top, p_cont
        return out

    def bits_per_char(self, codes) -> dict[int, float]:
        """{order: bits per character} on a coded text."""
        if len(codes) == 0:
            raise ValueError("cannot score an empty text")
        return {n: float(-np.log2(p).mean()) for n, p in self.probs(codes).items()}


def uniform_bpc(vocab_size: int) -> float:
    """The bits per character of a uniform guess over the vocabulary."""
    return math.log2(vocab_size)
