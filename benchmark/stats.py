"""Uncertainty of accuracies: exact (Clopper-Pearson) binomial intervals."""
from __future__ import annotations

from scipy.stats import beta


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion k/n.

    Exact rather than Wald, because robust accuracies near 0% or 100% on a few hundred
    images are exactly where the normal approximation breaks.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def fmt_interval(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"
