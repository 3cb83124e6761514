"""logsumexp against scipy.special.logsumexp (float64) on many shapes, axes and layouts."""

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mlecore
from conftest import CLASS_COUNTS, tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cols", CLASS_COUNTS)
def test_rows_match_scipy(rng, dtype, cols):
    x = (rng.standard_normal((5, cols)) * 5).astype(dtype)
    got = mlecore.logsumexp(x, axis=-1)
    assert got.dtype == dtype and got.shape == (5,)
    np.testing.assert_allclose(got, sp.logsumexp(x.astype(np.float64), axis=-1), *tol(dtype))


@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2), ()])
@pytest.mark.parametrize("layout", ["C", "F", "strided", "reversed"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_axes_and_layouts(rng, axis, layout, keepdims):
    base = rng.standard_normal((4, 6, 10)) * 3
    x = {
        "C": base,
        "F": np.asfortranarray(base),
        "strided": rng.standard_normal((8, 6, 30))[::2, :, ::3],
        "reversed": base[::-1, :, ::-1],
    }[layout]
    got = mlecore.logsumexp(x, axis=axis, keepdims=keepdims)
    want = sp.logsumexp(x, axis=axis, keepdims=keepdims)
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_huge_class_count_and_long_rows(rng):
    x = rng.standard_normal((3, 150_001)).astype(np.float32) * 10
    np.testing.assert_allclose(mlecore.logsumexp(x, axis=1),
                               sp.logsumexp(x.astype(np.float64), axis=1), rtol=2e-6)
    one = rng.standard_normal(300_000)
    np.testing.assert_allclose(mlecore.logsumexp(one), sp.logsumexp(one), rtol=1e-13)


def test_full_precision_when_one_term_dominates():
    assert mlecore.logsumexp([0.0, -40.0]) == pytest.approx(4.248354255291589e-18, rel=1e-14)
    assert mlecore.logsumexp(np.array([0.0, -40.0], np.float32)) == pytest.approx(
        4.248354e-18, rel=1e-6)
    x = np.full(10_000, -30.0)
    x[1234] = 5.0
    assert mlecore.logsumexp(x) - 5.0 == pytest.approx(9999 * np.exp(-35.0), rel=1e-12)


@pytest.mark.parametrize("row", [
    [np.inf, 0.0], [-np.inf, -np.inf], [np.nan, 0.0], [np.inf, -np.inf], [np.inf, np.inf],
    [np.nan, np.inf], [-np.inf, 3.0], [1e308, 1e308], [5.0],
])
def test_special_values_like_scipy(row):
    with np.errstate(all="ignore"):
        want = sp.logsumexp(row)
    got = mlecore.logsumexp(row)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-15)


def test_empty_inputs_give_neg_inf():
    assert mlecore.logsumexp([]) == -np.inf
    np.testing.assert_array_equal(mlecore.logsumexp(np.zeros((2, 0)), axis=1), [-np.inf] * 2)
    assert mlecore.logsumexp(np.zeros((0, 3)), axis=1).shape == (0,)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint32, bool])
def test_integer_and_bool_input_is_float64(dtype):
    x = np.array([[1, 0, 1], [0, 0, 1]], dtype=dtype)
    got = mlecore.logsumexp(x, axis=1)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, sp.logsumexp(x.astype(np.float64), axis=1), rtol=1e-15)


def test_scalar_results_are_numpy_scalars():
    r = mlecore.logsumexp(np.float32(3.0))
    assert isinstance(r, np.float32) and r == 3.0
    assert isinstance(mlecore.logsumexp([1.0, 2.0]), np.float64)


@pytest.mark.parametrize("b", [
    [1.0, 2.0, 0.5], [1.0, -1.0, 0.5], [0.0, 1.0, 1.0], [-1.0, -2.0, 0.0], [1.0, 0.0, 0.0],
])
@pytest.mark.parametrize("return_sign", [False, True])
def test_scale_factors_b(b, return_sign):
    a = np.array([[1.0, 2.0, 3.0], [np.inf, -1.0, 0.0], [np.nan, 0.5, 0.25]])
    with np.errstate(all="ignore"):
        want = sp.logsumexp(a, axis=1, b=b, return_sign=return_sign)
        got = mlecore.logsumexp(a, axis=1, b=b, return_sign=return_sign)
    for g, w in zip(got if return_sign else [got], want if return_sign else [want], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-14)


def test_b_cancellation_and_precision():
    assert mlecore.logsumexp([1, 1], b=[1, -1], return_sign=True) == (-np.inf, 0.0)
    assert mlecore.logsumexp([0.0, -40.0], b=[1, 1]) == pytest.approx(4.248354255291589e-18)
    assert np.isnan(mlecore.logsumexp([1.0, 2.0], b=[1, -1]))
    assert mlecore.logsumexp(np.ones((2, 3), np.float32), b=2).dtype == np.float32


def test_return_sign_without_b():
    r, s = mlecore.logsumexp(np.array([[1.0, 2.0], [-np.inf, -np.inf]]), axis=1,
                             return_sign=True)
    np.testing.assert_array_equal(s, [1.0, 0.0])
    np.testing.assert_allclose(r, sp.logsumexp([[1.0, 2.0], [-np.inf, -np.inf]], axis=1))


def test_input_is_not_modified(rng):
    x = rng.standard_normal((7, 33))
    before = x.copy()
    mlecore.logsumexp(x, axis=0)
    mlecore.softmax(x, axis=1)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("bad, exc", [
    (np.array([1 + 1j, 2]), TypeError),
    (np.array(["a", "b"]), TypeError),
    (np.array([object(), object()]), TypeError),
])
def test_bad_dtypes(bad, exc):
    with pytest.raises(exc, match="complex|real numeric"):
        mlecore.logsumexp(bad)


def test_bad_axes():
    with pytest.raises(np.exceptions.AxisError):
        mlecore.logsumexp(np.ones(3), axis=3)
    with pytest.raises(ValueError, match="repeated|duplicate"):
        mlecore.logsumexp(np.ones((2, 3)), axis=(0, 0))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                  elements=st.floats(-700, 700)),
       st.data())
def test_property_matches_scipy(x, data):
    axis = data.draw(st.sampled_from([None] + list(range(x.ndim))))
    np.testing.assert_allclose(mlecore.logsumexp(x, axis=axis), sp.logsumexp(x, axis=axis),
                               rtol=1e-12, atol=1e-300)


def _ulps(got, want):
    return abs(float(got) - want) / np.spacing(want)


@pytest.mark.parametrize("tier", ["avx512", "avx2", "neon", "scalar"])
def test_many_equal_small_terms_keep_their_digits(tier):
    # log(1 + n·e^v): a maximum and n equal terms far below it. Summing them one per
    # accumulator lost up to 40 ulp in float64; a two-level sum keeps the error near the
    # exponential's own.
    from decimal import Decimal, localcontext

    from mlecore import _mlecore as ext

    old = ext.simd_tier()
    worst = 0.0
    try:
        used = ext.set_simd_tier(tier)  # the widest tier this CPU has, up to `tier`
        # The scalar tier has one lane: twice as many terms per accumulator.
        bound = 8 if used == "scalar" else 4
        for n in (1000, 5000, 20000, 70000):
            for v in (-30.0, -20.0, -10.0, -3.0, -0.5):
                with localcontext() as ctx:
                    ctx.prec = 50
                    want = float((1 + n * Decimal(v).exp()).ln())
                got = mlecore.logsumexp(np.array([0.0] + [v] * n))
                worst = max(worst, _ulps(got, want))
    finally:
        ext.set_simd_tier(old)
    assert worst <= bound, f"{worst} ulp on {used}"
