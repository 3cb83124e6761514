"""softmax and log_softmax against scipy.special (float64)."""

import numpy as np
import pytest
import scipy.special as sp

import mlecore
from conftest import CLASS_COUNTS, tol


@pytest.mark.parametrize("fn, ref", [(mlecore.softmax, sp.softmax),
                                     (mlecore.log_softmax, sp.log_softmax)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cols", CLASS_COUNTS)
def test_rows(rng, fn, ref, dtype, cols):
    x = (rng.standard_normal((4, cols)) * 4).astype(dtype)
    got = fn(x, axis=1)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, ref(x.astype(np.float64), axis=1), *tol(dtype))


@pytest.mark.parametrize("fn, ref", [(mlecore.softmax, sp.softmax),
                                     (mlecore.log_softmax, sp.log_softmax)])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, (0, 2)])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_axes_and_layouts(rng, fn, ref, axis, layout):
    base = rng.standard_normal((3, 5, 9))
    x = {"C": base, "F": np.asfortranarray(base), "strided": base[:, ::2, ::-2]}[layout]
    np.testing.assert_allclose(fn(x, axis=axis), ref(x, axis=axis), rtol=1e-12, atol=1e-300)


def test_rows_with_inf_or_nan_are_nan_like_torch():
    out = mlecore.log_softmax(np.array([[np.inf, 0.0], [1.0, 2.0], [np.nan, 0.0]]), axis=1)
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    np.testing.assert_allclose(out[1], sp.log_softmax([1.0, 2.0]))
    assert np.isnan(mlecore.softmax(np.array([np.inf, 0.0]))).all()
    # −inf logits are fine: probability 0, log-probability −inf.
    np.testing.assert_array_equal(mlecore.softmax(np.array([-np.inf, 0.0])), [0.0, 1.0])


def test_empty_and_scalar():
    assert mlecore.softmax(np.zeros((2, 0)), axis=1).shape == (2, 0)
    assert mlecore.softmax(5.0) == 1.0
    np.testing.assert_allclose(mlecore.softmax([[1.0, 2.0], [3.0, 4.0]]).sum(), 1.0)
