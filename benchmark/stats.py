"""Uncertainty of accuracies: exact (Clopper-Pearson) binomial intervals and the exact McNemar test."""
from __future__ import annotations

from functools import lru_cache

from scipy.stats import beta, binomtest


@lru_cache(maxsize=4096)  # pure in (k, n, alpha); per-image scoring asks for (0, 1) and (1, 1) thousands of times
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


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes on the same images.

    ``b``: images right under the first condition only, ``c``: right under the second only
    (the discordant pairs; concordant images carry no information on the difference). Under
    "no difference" each discordant image is a fair coin, so p is the two-sided binomial test
    of b successes in b + c trials at 1/2. Paired, hence far more sensitive than comparing two
    independent intervals on the same images. No discordant pair: p = 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
