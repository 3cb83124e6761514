"""A differential property suite: mlecore against scipy, torch and the float64 numpy
reference over shapes, layouts, dtypes, options, extreme values and aliasing.

Profiles (conftest.py): "ci" is derandomized and small, so CI runs the same cases every time;
"fuzz" (`make fuzz`) draws many more. `--hypothesis-show-statistics` prints how many cases
each property ran.
"""

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mlecore
from conftest import PROPERTIES, numpy_ce, numpy_ce_grad

FLOATS = [np.float32, np.float64]
#: (rtol, atol) against a float64 reference, per dtype.
TOL = {np.float32: (5e-5, 5e-6), np.float64: (1e-11, 1e-13)}


def values(dtype, extreme=True):
    """Floats of `dtype`: ordinary ones, huge ones, and (with `extreme`) ±inf and NaN."""
    width = 32 if dtype == np.float32 else 64
    big = float(np.float32(1e30)) if dtype == np.float32 else 1e200
    ordinary = st.floats(-50, 50, width=width)
    wide = st.floats(-big, big, width=width)
    if not extreme:
        return st.one_of(ordinary, ordinary, wide)
    return st.one_of(ordinary, ordinary, wide,
                     st.sampled_from([np.inf, -np.inf, np.nan]).map(dtype))


@st.composite
def laid_out(draw, arrays):
    """An array in one of the layouts users pass: C order, Fortran order, strided, reversed."""
    a = draw(arrays)
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim:
        wide = np.repeat(a, 2, axis=-1)
        return wide[..., ::2]
    if layout == "reversed" and a.ndim:
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    return a


@st.composite
def float_arrays(draw, extreme=True, max_dims=3):
    dtype = draw(st.sampled_from(FLOATS))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=0, max_side=9))
    return draw(laid_out(hnp.arrays(dtype, shape, elements=values(dtype, extreme))))


@PROPERTIES
@given(float_arrays(), st.data())
def test_logsumexp_matches_scipy(x, data):
    axis = data.draw(st.sampled_from([None, -1, 0] + ([(0, x.ndim - 1)] if x.ndim > 1 else [])))
    got = mlecore.logsumexp(x, axis=axis)
    with np.errstate(all="ignore"):
        if x.size:
            want = sp.logsumexp(x.astype(np.float64), axis=axis)
        else:  # scipy fails on some empty shapes; log Σ over nothing is −inf
            want = np.log(np.sum(np.exp(x.astype(np.float64)), axis=axis))
    rtol, atol = TOL[x.dtype.type]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)
    assert np.shape(got) == np.shape(want)


@PROPERTIES
@given(float_arrays(), st.data())
def test_softmax_and_log_softmax_match_scipy_where_rows_are_finite(x, data):
    assume(x.size)  # scipy refuses empty input (mlecore returns it empty)
    axis = data.draw(st.sampled_from([-1, 0]))
    keep = x.copy()
    for fn, ref in ((mlecore.softmax, sp.softmax), (mlecore.log_softmax, sp.log_softmax)):
        got = fn(x, axis=axis)
        with np.errstate(all="ignore"):
            want = ref(x.astype(np.float64), axis=axis)
        # The documented difference: a slice holding +inf or NaN is all NaN (torch's rule).
        bad = np.any(np.isnan(x) | (x == np.inf), axis=axis, keepdims=True)
        bad = np.broadcast_to(bad, x.shape)
        assert np.isnan(got[bad]).all()
        rtol, atol = TOL[x.dtype.type]
        np.testing.assert_allclose(got[~bad].astype(np.float64), want[~bad], rtol=rtol,
                                   atol=atol * 10)
    np.testing.assert_array_equal(x, keep)  # inputs never modified


@st.composite
def ce_problems(draw, matrix=False):
    """A cross-entropy call: logits of any batch shape (an (N, C) matrix, N ≥ 1, with
    `matrix`), class-index or probability targets, every option."""
    dtype = draw(st.sampled_from(FLOATS))
    n = draw(st.integers(1 if matrix else 0, 7))
    c = draw(st.integers(1, 9))
    extra = () if matrix else draw(st.sampled_from([(), (), (3,), (2, 2)]))
    unbatched = not matrix and not extra and draw(st.booleans())
    shape = (c,) if unbatched else (n, c) + extra
    x = draw(laid_out(hnp.arrays(dtype, shape, elements=values(dtype, extreme=False))))
    soft = draw(st.booleans())
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    if soft:
        p = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
        cax = 0 if len(shape) == 1 else 1
        with np.errstate(invalid="ignore"):
            t = np.nan_to_num(p / p.sum(axis=cax, keepdims=True)).astype(dtype)
    else:
        label_dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16]))
        ignore = draw(st.sampled_from([-100, c - 1, 200]))
        t = draw(hnp.arrays(label_dtype, tshape, elements=st.integers(0, c - 1)))
        if t.size and draw(st.booleans()) and np.iinfo(label_dtype).min <= ignore \
                <= np.iinfo(label_dtype).max:
            t.reshape(-1)[:: draw(st.integers(1, 3))] = ignore
    kw = dict(reduction=draw(st.sampled_from(["mean", "sum", "none"])),
              label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0])))
    if draw(st.booleans()):
        kw["weight"] = draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.25, 4)))
    if not soft:
        kw["ignore_index"] = ignore
    return x, t, kw


def _close(got, want, dtype, what):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol * 10, atol=atol * 10, err_msg=what)


@PROPERTIES
@given(ce_problems())
def test_cross_entropy_and_its_gradient_match_the_reference(problem):
    x, t, kw = problem
    keep_x, keep_t = x.copy(), t.copy()
    want_loss, want_grad = numpy_ce_grad(x, t, **kw)
    _close(mlecore.cross_entropy(x, t, **kw), want_loss, x.dtype.type, "loss")
    loss, g = mlecore.cross_entropy_with_grad(x, t, **kw)
    _close(loss, want_loss, x.dtype.type, "fused loss")
    scale = max(1.0, float(np.abs(want_grad).max(initial=0)))
    _close(g / scale, want_grad / scale, x.dtype.type, "gradient")
    np.testing.assert_array_equal(x, keep_x)
    np.testing.assert_array_equal(t, keep_t)
    # Into a buffer, and in place over a copy of the logits: the same numbers.
    buf = np.empty_like(x)
    assert mlecore.cross_entropy_with_grad(x, t, out=buf, **kw)[1] is buf
    np.testing.assert_array_equal(buf, g)
    xi = x.copy()
    mlecore.cross_entropy_with_grad(xi, t, out=xi, **kw)
    np.testing.assert_array_equal(xi, g)
    if x.ndim == 2 and t.dtype.kind in "iu":
        logp = mlecore.log_softmax(x, axis=1)
        nll_kw = {k: v for k, v in kw.items() if k != "label_smoothing"}
        _close(mlecore.nll_loss(logp, t, **nll_kw), numpy_ce(x, t, **nll_kw), x.dtype.type,
               "nll_loss")


def _over(buf, offset, like):
    """An array of `like`'s dtype and values in `buf` at byte `offset`."""
    a = np.frombuffer(buf, like.dtype, count=like.size, offset=offset).reshape(like.shape)
    a[...] = like
    return a


@PROPERTIES
@given(ce_problems(matrix=True), st.sampled_from(["input", "target", "weight"]))
def test_out_that_shares_memory_with_an_argument_is_refused(problem, victim):
    x, t, kw = problem
    assume(x.size >= 2)  # out spans two elements: the argument starts inside it
    buf = bytearray(2 * (x.nbytes + t.nbytes + 8 * x.shape[1]) + 64)
    # Views of one buffer through different objects: the check must go by memory.
    out = np.frombuffer(memoryview(buf), x.dtype, count=x.size).reshape(x.shape)
    at = x.itemsize  # one element past out's start: a partial overlap
    if victim == "input":
        x = _over(buf, at, x)
    elif victim == "target":
        t = _over(buf, at if t.size else 0, t)
        assume(t.size)
    else:
        kw = kw | {"weight": _over(buf, at, kw.get("weight", np.ones(x.shape[1])))}
    with pytest.raises(ValueError, match="overlaps"):
        mlecore.cross_entropy_with_grad(x, t, out=out, **kw)


@pytest.mark.torch
@PROPERTIES
@given(ce_problems())
def test_both_torch_backends_match_torch(problem):
    import torch
    import torch.nn.functional as F

    import mlecore.torch as mt

    x, t, kw = problem
    xt = torch.from_numpy(np.array(x, np.float64))
    tt = torch.from_numpy(np.array(t))
    tkw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    ref_t = tt.to(torch.float64) if tt.is_floating_point() else tt.to(torch.int64)
    xr = xt.clone().requires_grad_()
    want = F.cross_entropy(xr, ref_t, **tkw)
    want.sum().backward()
    # torch's float64 log-softmax loses digits in proportion to the logits' size.
    atol = 1e-12 + 1e-15 * float(xt.abs().max()) if xt.numel() else 1e-12
    for backend in ("rust", "torch"):
        xi = xt.clone().requires_grad_()
        got = mt.cross_entropy(xi, tt, backend=backend, **tkw)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=atol, equal_nan=True)
        got.sum().backward()
        torch.testing.assert_close(xi.grad, xr.grad, rtol=1e-10, atol=atol, equal_nan=True)


def test_every_property_runs_the_chosen_profile():
    properties = [v for k, v in globals().items() if k.startswith("test_") and
                  hasattr(v, "hypothesis")]
    assert len(properties) == 5
    for test in properties:
        chosen = test._hypothesis_internal_use_settings
        assert chosen.max_examples == PROPERTIES.max_examples >= 60, test.__name__
