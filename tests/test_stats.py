"""Intervals and the paired test against references computed another way (closed forms, scipy's
exact binomial test, literal values), never against themselves."""
import pytest
from scipy.stats import binomtest

from benchmark.stats import clopper_pearson, fmt_interval, mcnemar_exact


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 10), (1, 64), (10, 64), (250, 500), (0, 1), (1, 1)])
def test_clopper_pearson_matches_scipys_exact_binomial_interval(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_clopper_pearson_closed_forms_and_literals():
    # k = 0 and k = n have closed forms: upper = 1 - (alpha/2)^(1/n), lower = (alpha/2)^(1/n)
    for n in (1, 10, 64, 1000):
        assert clopper_pearson(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), abs=1e-12)
        assert clopper_pearson(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), abs=1e-12)
    # literal values (R: binom.test(3, 10)$conf.int; 10/64 is the README's DiffPure PGD-EOT row)
    assert clopper_pearson(3, 10) == pytest.approx((0.0667395, 0.6524529), abs=1e-7)
    assert fmt_interval(10, 64) == "[7.8, 26.9]" and fmt_interval(1, 16) == "[0.2, 30.2]"
    assert clopper_pearson(0, 0) == (0.0, 1.0)  # no images: no information
    with pytest.raises(ValueError):
        clopper_pearson(11, 10)


def test_mcnemar_exact_matches_the_closed_form():
    """Two-sided exact McNemar p = min(1, 2 * sum_{k <= min(b, c)} C(b+c, k) / 2^(b+c)), by hand."""
    from math import comb

    assert mcnemar_exact(8, 0) == pytest.approx(2 / 256)  # the README's DW_Both vs white box: p = 0.008
    assert mcnemar_exact(0, 8) == pytest.approx(0.0078125)
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)  # 2 * (1 + 12 + 66) / 2^12
    assert mcnemar_exact(3, 1) == pytest.approx(0.625)  # 2 * (1 + 4) / 16
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    for b, c in [(7, 3), (20, 9), (1, 12), (40, 25)]:
        ref = min(1.0, 2 * sum(comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))
        assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
