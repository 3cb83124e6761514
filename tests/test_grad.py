"""cross_entropy_with_grad against float64 references (torch autograd, and the gradient
written out in numpy) and finite differences; `out=`."""

import numpy as np
import pytest

import mlecore
from conftest import tol

OPTS = [dict(), dict(weight="w"), dict(label_smoothing=0.2), dict(weight="w",
        label_smoothing=0.3), dict(ignore_index=1)]


@pytest.mark.parametrize("shape", [(8, 5), (1, 1), (5,), (3, 4, 6), (2, 2049)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_autograd(rng, ref, shape, soft, opts, reduction):
    x = rng.standard_normal(shape) * 2
    c = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    if soft:
        t = rng.random(shape)
        t /= t.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        t = rng.integers(0, c, tshape)
    kw = {k: (rng.random(c) + 0.5 if v == "w" else v) for k, v in opts.items()}
    if soft:
        kw.pop("ignore_index", None)
    loss, grad = mlecore.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
    want_loss, want_grad = ref.ce_grad(x, t, reduction=reduction, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    assert grad.shape == x.shape
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_gradient(rng, ref, dtype):
    x = rng.standard_normal((16, 3001)).astype(dtype)
    y = rng.integers(0, 3001, 16)
    loss, grad = mlecore.cross_entropy_with_grad(x, y, label_smoothing=0.1)
    want_loss, want_grad = ref.ce_grad(x, y, label_smoothing=0.1)
    assert grad.dtype == dtype
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol * 1e-3)


def test_finite_differences(rng):
    x = rng.standard_normal((3, 4))
    y = np.array([0, 3, 1])
    w = rng.random(4) + 0.5
    _, grad = mlecore.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1)
    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = h
        num[i] = (mlecore.cross_entropy(x + d, y, weight=w, label_smoothing=0.1)
                  - mlecore.cross_entropy(x - d, y, weight=w, label_smoothing=0.1)) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_out_buffer_and_in_place(rng):
    x = rng.standard_normal((64, 300)).astype(np.float32)
    y = rng.integers(0, 300, 64)
    keep = x.copy()
    loss, grad = mlecore.cross_entropy_with_grad(x, y)
    np.testing.assert_array_equal(x, keep)  # input untouched without out=

    buf = np.full_like(x, np.nan)
    loss2, g2 = mlecore.cross_entropy_with_grad(x, y, out=buf)
    assert g2 is buf and loss2 == loss
    np.testing.assert_array_equal(buf, grad)

    loss3, g3 = mlecore.cross_entropy_with_grad(x, y, out=x)
    assert g3 is x and loss3 == loss
    np.testing.assert_array_equal(x, grad)


def test_out_for_k_dim_and_strided_layouts(rng):
    x = rng.standard_normal((2, 5, 3, 4))
    y = rng.integers(0, 5, (2, 3, 4))
    _, want = mlecore.cross_entropy_with_grad(x, y)
    buf = np.empty_like(x)
    mlecore.cross_entropy_with_grad(x, y, out=buf)
    np.testing.assert_array_equal(buf, want)
    xi = x.copy()
    mlecore.cross_entropy_with_grad(xi, y, out=xi)
    np.testing.assert_allclose(xi, want, rtol=1e-15)
    f = np.asfortranarray(rng.standard_normal((6, 7)))
    yf = rng.integers(0, 7, 6)
    _, wf = mlecore.cross_entropy_with_grad(np.ascontiguousarray(f), yf)
    mlecore.cross_entropy_with_grad(f, yf, out=f)
    np.testing.assert_allclose(f, wf, rtol=1e-15)


def test_bad_out_buffers(rng):
    x = rng.standard_normal((4, 6))
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        mlecore.cross_entropy_with_grad(x, y, out=np.empty((4, 5)))
    with pytest.raises(ValueError, match="dtype"):
        mlecore.cross_entropy_with_grad(x, y, out=np.empty((4, 6), np.float32))
    big = np.zeros((5, 6))
    with pytest.raises(ValueError, match="overlaps"):
        mlecore.cross_entropy_with_grad(big[:4], y, out=big[1:])
    ro = np.empty((4, 6))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        mlecore.cross_entropy_with_grad(x, y, out=ro)


def test_ignored_rows_of_neg_inf_get_zero_gradient():
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]], np.float32)
    y = np.array([-100, 2])
    loss, grad = mlecore.cross_entropy_with_grad(x, y)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(grad[0], 0.0)
    assert np.isfinite(grad).all()
    _, gall = mlecore.cross_entropy_with_grad(x, np.array([-100, -100]))
    np.testing.assert_array_equal(gall, 0.0)
