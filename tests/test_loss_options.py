"""The loss options fused kernels offer: soft-capping, the z-loss, and statistics from the
same pass, on both front-ends, against float64 references."""

import importlib.util
import itertools
import math

import numpy as np
import pytest

import mlecore
from conftest import numpy_ce, numpy_ce_grad, numpy_ce_stats, tol

OPTIONS = list(itertools.product([None, 5.0], [0.0, 1e-3], [False, True], [0.0, 0.1],
                                 ["mean", "sum", "none"]))


def _case(rng, shape, soft, dtype=np.float64):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    c = shape[0] if len(shape) == 1 else shape[1]
    if soft:
        p = rng.random(shape)
        return x, (p / p.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)).astype(dtype)
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    y = rng.integers(0, c, tshape)
    if y.ndim and y.size > 2:
        y.reshape(-1)[::4] = -100
    return x, y


@pytest.mark.parametrize("shape", [(7, 5), (5,), (3, 4, 6), (2, 2049)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("softcap, z, weighted, eps, reduction", OPTIONS)
def test_options_match_the_reference(rng, shape, soft, softcap, z, weighted, eps, reduction):
    x, t = _case(rng, shape, soft)
    c = shape[0] if len(shape) == 1 else shape[1]
    kw = dict(reduction=reduction, label_smoothing=eps, softcap=softcap, lse_square_scale=z,
              weight=rng.random(c) + 0.5 if weighted else None)
    np.testing.assert_allclose(mlecore.cross_entropy(x, t, **kw), numpy_ce(x, t, **kw),
                               rtol=1e-11, atol=1e-13)
    loss, grad = mlecore.cross_entropy_with_grad(x, t, **kw)
    want_loss, want_grad = numpy_ce_grad(x, t, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-13)
    stats = mlecore.cross_entropy(x, t, return_stats=True, **kw)
    want = numpy_ce_stats(x, t, **kw)
    assert isinstance(stats, mlecore.CrossEntropyStats)
    for got, exp in zip(stats[:3], want[:3], strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-11, atol=1e-13)
    assert stats.accuracy == pytest.approx(want[3], nan_ok=True)
    stats2, grad2 = mlecore.cross_entropy_with_grad(x, t, return_stats=True, **kw)
    np.testing.assert_array_equal(grad2, grad)
    assert stats2.accuracy == stats.accuracy


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_options_in_low_precision(rng, dtype):
    x, y = _case(rng, (9, 3001), False, dtype)
    kw = dict(softcap=30.0, lse_square_scale=1e-4, label_smoothing=0.1)
    rtol, atol = tol(dtype)
    want_loss, want_grad = numpy_ce_grad(x, y, **kw)
    loss, grad = mlecore.cross_entropy_with_grad(x, y, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol * 1e-3)
    out = np.empty_like(x)
    mlecore.cross_entropy_with_grad(x, y, out=out, **kw)
    np.testing.assert_array_equal(out, grad)


def test_options_with_out_buffers_and_in_place(rng):
    x, y = _case(rng, (64, 300), False, np.float32)
    kw = dict(softcap=10.0, lse_square_scale=1e-3)
    keep = x.copy()
    loss, grad = mlecore.cross_entropy_with_grad(x, y, **kw)
    np.testing.assert_array_equal(x, keep)
    buf = np.empty_like(x)
    assert mlecore.cross_entropy_with_grad(x, y, out=buf, **kw)[1] is buf
    np.testing.assert_array_equal(buf, grad)
    xi = x.copy()
    mlecore.cross_entropy_with_grad(xi, y, out=xi, **kw)
    np.testing.assert_array_equal(xi, grad)
    xk = np.moveaxis(x.reshape(8, 8, 300), 2, 1).copy()  # (8, 300, 8): K-dim
    yk = y.reshape(8, 8)
    _, gk = mlecore.cross_entropy_with_grad(xk, yk, **kw)
    np.testing.assert_allclose(np.moveaxis(gk, 1, 2).reshape(64, 300), grad, rtol=1e-6)


def test_stats_of_known_values():
    # Two rows: the first predicted right, the second wrong; one ignored row.
    x = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])
    y = np.array([0, 0, -100])
    stats = mlecore.cross_entropy(x, y, lse_square_scale=0.5, return_stats=True)
    lse = np.log(np.exp(x).sum(axis=1))
    assert stats.accuracy == 0.5
    np.testing.assert_allclose(stats.lse, lse)
    assert stats.z_loss == pytest.approx(0.5 * (lse[0] ** 2 + lse[1] ** 2) / 2)
    assert stats.loss == pytest.approx(((lse[0] - 3) + (lse[1] - 0)) / 2 + stats.z_loss)
    assert np.isnan(mlecore.cross_entropy(x, np.full(3, -100), return_stats=True).accuracy)


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(softcap=0.0), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap=-1.0), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap=float("inf")), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap="big"), TypeError, "softcap must be a float"),
    (dict(lse_square_scale=-1e-4), ValueError, "lse_square_scale must be a finite number"),
    (dict(lse_square_scale=float("nan")), ValueError, "lse_square_scale must be a finite"),
])
def test_bad_options_are_refused(kw, exc, msg):
    x, y = np.zeros((2, 3)), np.array([0, 1])
    for fn in (mlecore.cross_entropy, mlecore.cross_entropy_with_grad):
        with pytest.raises(exc, match=msg):
            fn(x, y, **kw)


# --- mlecore.torch -----------------------------------------------------------------------

def _torch_reference(x, t, softcap, z, **kw):
    """The options composed from torch's own operations."""
    import torch
    import torch.nn.functional as F

    s = softcap * torch.tanh(x / softcap) if softcap else x
    reduction = kw.pop("reduction", "mean")
    ce = F.cross_entropy(s, t, reduction="none", **kw)
    cls = 0 if s.ndim == 1 else 1
    lse = torch.logsumexp(s, cls)
    counted = (t != kw.get("ignore_index", -100)) if not t.is_floating_point() \
        else torch.ones_like(lse, dtype=torch.bool)
    rows = ce + torch.where(counted, z * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    w = kw.get("weight")
    denom = (torch.where(counted, w[t.clamp(min=0)] if w is not None else
                         torch.ones_like(lse), torch.zeros_like(lse)).sum()
             if not t.is_floating_point() else torch.tensor(float(lse.numel())))
    return rows.sum() / denom


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_options_match_torch_operations(backend, soft, reduction):
    import torch

    import mlecore.torch as mt

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 4
    t = (torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), 1) if soft
         else torch.tensor([0, 4, -100, 2, 2, 1]))
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    for softcap, z in ((None, 1e-3), (3.0, 0.0), (3.0, 1e-2)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = mt.cross_entropy(xa, t, softcap=softcap, lse_square_scale=z, backend=backend,
                               **kw)
        want = _torch_reference(xb, t, softcap, z, **kw)
        torch.testing.assert_close(got, want)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        loss, grad = mt.cross_entropy_with_grad(x, t, softcap=softcap, lse_square_scale=z,
                                                backend=backend, **kw)
        torch.testing.assert_close(loss, want.detach())
        torch.testing.assert_close(grad, xb.grad)
        stats = mt.cross_entropy(x, t, softcap=softcap, lse_square_scale=z,
                                 return_stats=True, backend=backend, **kw)
        want_stats = numpy_ce_stats(x.numpy(), t.numpy(), softcap=softcap,
                                    lse_square_scale=z, weight=w.numpy(), **{
                                        k: v for k, v in kw.items() if k != "weight"})
        torch.testing.assert_close(stats.loss, want.detach())
        np.testing.assert_allclose(stats.z_loss.numpy(), want_stats[1], rtol=1e-10)
        np.testing.assert_allclose(stats.lse.numpy(), want_stats[2], rtol=1e-10)
        assert float(stats.accuracy) == pytest.approx(want_stats[3])


@pytest.mark.torch
def test_torch_options_gradcheck_and_compile():
    import torch

    import mlecore.torch as mt

    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 5, -100, 0])
    p = torch.softmax(torch.randn(4, 6, generator=gen, dtype=torch.float64), 1)
    for t in (y, p):
        def f(x, t=t):
            return mt.cross_entropy(x, t, softcap=2.5, lse_square_scale=0.01)

        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))
    compiled = torch.compile(lambda x, y: mt.cross_entropy(x, y, softcap=2.5,
                                                           lse_square_scale=0.01),
                             fullgraph=True)
    torch.testing.assert_close(compiled(x, y), mt.cross_entropy(x, y, softcap=2.5,
                                                               lse_square_scale=0.01))


def test_a_softcap_outside_float32s_range_is_refused_on_every_path():
    """softcap=1e300 or 1e-50 on float32 or float16 gave NaN silently on every path (the
    cap is inf or 0 in float32); such a cap is refused, and the edges of the range compute
    right: the largest cap changes no logit, the smallest leaves a uniform softmax."""
    low, high = 2.0**-126, float(np.finfo(np.float32).max)  # float32's normal range
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 5)).astype(np.float32), np.array([0, 4, 2, 1])
    h, w = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((5, 3))
    calls = [lambda cap: mlecore.cross_entropy(x, y, softcap=cap),
             lambda cap: mlecore.cross_entropy_with_grad(x, y, softcap=cap),
             lambda cap: mlecore.linear_cross_entropy(h, w.astype(np.float32), y, softcap=cap),
             lambda cap: mlecore.linear_cross_entropy_with_grad(h, w, y, softcap=cap)]
    if importlib.util.find_spec("dask") is not None:  # refused before any block is read
        import dask.array as da

        calls.append(lambda cap: mlecore.cross_entropy(da.from_array(x), y, softcap=cap))
    for cap in (1e300, 1e-50, high * (1 + 1e-15), low / 2, 5e-324):
        for call in calls:
            with pytest.raises(ValueError, match=r"softcap must be in \[1.175494e-38, "
                                                 r"3.402823e\+38\] \(float32's normal range"):
                call(cap)
    for dtype in (np.float16, np.float32, np.float64):
        xd = x.astype(dtype)
        np.testing.assert_allclose(mlecore.cross_entropy(xd, y, softcap=high),
                                   mlecore.cross_entropy(xd, y), rtol=1e-6)
        loss, grad = mlecore.cross_entropy_with_grad(xd, y, softcap=low)
        np.testing.assert_allclose(loss, np.log(5), rtol=1e-3)
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(mlecore.linear_cross_entropy(h.astype(dtype), w, y,
                                                                softcap=low),
                                   np.log(5), rtol=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_a_softcap_outside_float32s_range_is_refused_by_the_torch_functions(backend):
    import torch

    import mlecore.torch as mt

    low, high = 2.0**-126, float(np.finfo(np.float32).max)  # float32's normal range
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 5, generator=gen), torch.tensor([0, 4, 2, 1])
    h, w = torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen)
    calls = [lambda cap: mt.cross_entropy(x, y, softcap=cap, backend=backend),
             lambda cap: mt.cross_entropy_with_grad(x, y, softcap=cap, backend=backend),
             lambda cap: mt.linear_cross_entropy(h, w, y, softcap=cap, backend=backend)]
    for cap in (1e300, 1e-50):
        for call in calls:
            with pytest.raises(ValueError, match=r"softcap must be in \[1.175494e-38"):
                call(cap)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        xd = x.to(dtype).requires_grad_()
        torch.testing.assert_close(mt.cross_entropy(xd, y, softcap=high, backend=backend),
                                   mt.cross_entropy(xd, y, backend=backend))
        loss = mt.cross_entropy(xd, y, softcap=low, backend=backend)
        loss.backward()
        assert abs(float(loss) - math.log(5)) < 1e-2 and torch.isfinite(xd.grad).all()
        lin = mt.linear_cross_entropy(h.to(dtype), w.to(dtype), y, softcap=low,
                                      backend=backend)
        assert abs(float(lin) - math.log(5)) < 1e-2
