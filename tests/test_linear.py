"""The fused linear cross-entropy of the numpy API: against the float64 reference on the
materialized logits, every option and chunking, memory, and bad input."""

import tracemalloc

import numpy as np
import pytest

import mlecore
from conftest import numpy_ce, numpy_ce_grad, numpy_ce_stats, tol
from mlecore import _linear_chunks


def _problem(rng, n, d, c, dtype=np.float32, probs=False, bias=True, ignore=False):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((c, d)) / np.sqrt(d)).astype(dtype) * 3
    b = rng.standard_normal(c).astype(dtype) if bias else None
    if probs:
        t = rng.dirichlet(np.ones(c), size=n).astype(dtype) if c else np.zeros((n, 0), dtype)
    else:
        t = rng.integers(0, max(c, 1), n)
        if ignore and n:
            t[rng.random(n) < 0.3] = -100
    return x, w, b, t


def _logits(x, w, b):
    z = x.astype(np.float64) @ w.astype(np.float64).T
    return z if b is None else z + b


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"softcap": 3.0},
    {"lse_square_scale": 1e-3},
    {"softcap": 2.0, "lse_square_scale": 1e-2, "label_smoothing": 0.2},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agrees_with_the_materialized_reference(rng, options, reduction, probs, dtype):
    n, d, c = 37, 9, 53
    x, w, b, t = _problem(rng, n, d, c, dtype, probs=probs, ignore=True)
    cw = rng.random(c).astype(dtype) + 0.5
    kw = dict(options, reduction=reduction, weight=cw)
    want, g = numpy_ce_grad(_logits(x, w, b), t, **kw)
    rtol, atol = tol(dtype)
    for chunk in (1, 5, n, None):
        got = mlecore.linear_cross_entropy(x, w, t, b, chunk_size=chunk, **kw)
        np.testing.assert_allclose(got, want, rtol=rtol * 10, atol=atol * 10)
        loss, dx, dw, db = mlecore.linear_cross_entropy_with_grad(x, w, t, b, chunk_size=chunk,
                                                                  **kw)
        np.testing.assert_allclose(loss, want, rtol=rtol * 10, atol=atol * 10)
        assert dx.dtype == dw.dtype == db.dtype == dtype
        scale = rtol * 50
        np.testing.assert_allclose(dx, g @ w.astype(np.float64), rtol=scale, atol=scale)
        np.testing.assert_allclose(dw, g.T @ x.astype(np.float64), rtol=scale, atol=scale)
        np.testing.assert_allclose(db, g.sum(0), rtol=scale, atol=scale)


@pytest.mark.parametrize("n,c", [(0, 7), (1, 1), (3, 1), (16, 17), (33, 1000)])
def test_edge_shapes(rng, n, c):
    x, w, b, t = _problem(rng, n, 5, c)
    want, g = numpy_ce_grad(_logits(x, w, b), t, reduction="sum")
    loss, dx, dw, db = mlecore.linear_cross_entropy_with_grad(x, w, t, b, reduction="sum",
                                                              chunk_size=4)
    np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, g.T @ x, rtol=1e-4, atol=1e-5)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_every_row_ignored_gives_torchs_nan_and_zero_gradients(rng):
    x, w, b, _ = _problem(rng, 6, 4, 9)
    t = np.full(6, -100)
    loss, dx, dw, db = mlecore.linear_cross_entropy_with_grad(x, w, t, b, chunk_size=4)
    assert np.isnan(loss)
    assert not dx.any() and not dw.any() and not db.any()
    assert mlecore.linear_cross_entropy(x, w, t, b, reduction="sum") == 0


def test_unbatched_input_and_float16(rng):
    x, w, b, t = _problem(rng, 1, 6, 11)
    got = mlecore.linear_cross_entropy(x[0], w, t[0], b, reduction="none")
    assert got.shape == ()
    np.testing.assert_allclose(got, numpy_ce(_logits(x, w, b)[0], t[0], reduction="none"),
                               rtol=1e-5)
    h = mlecore.linear_cross_entropy_with_grad(x.astype(np.float16), w.astype(np.float16), t)
    assert h[0].dtype == h[1].dtype == h[2].dtype == np.float16
    np.testing.assert_allclose(h[0], numpy_ce(_logits(x.astype(np.float16),
                                                      w.astype(np.float16), None), t),
                               rtol=5e-3)


def test_stats_agree_with_the_reference(rng):
    x, w, b, t = _problem(rng, 40, 6, 5, ignore=True)
    want = numpy_ce_stats(_logits(x, w, b), t, lse_square_scale=0.01)
    got = mlecore.linear_cross_entropy(x, w, t, b, lse_square_scale=0.01, return_stats=True,
                                       chunk_size=7)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert 0 < got.accuracy < 1


def test_out_buffers_are_written_and_returned(rng):
    x, w, b, t = _problem(rng, 10, 4, 12)
    dx, dw, db = np.empty_like(x), np.full_like(w, 7.0), np.full_like(b, 7.0)
    loss, gx, gw, gb = mlecore.linear_cross_entropy_with_grad(x, w, t, b, out=(dx, dw, db))
    assert gx is not None and np.shares_memory(gx, dx) and gw is dw and gb is db
    _, g = numpy_ce_grad(_logits(x, w, b), t)
    np.testing.assert_allclose(dw, g.T @ x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, g.sum(0), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="shares memory"):
        mlecore.linear_cross_entropy_with_grad(x, w, t, b, out=(x, dw))
    with pytest.raises(ValueError, match="dw must be an array of shape"):
        mlecore.linear_cross_entropy_with_grad(x, w, t, b, out=(dx, dw.T))


def test_inputs_are_not_modified(rng):
    x, w, b, t = _problem(rng, 20, 5, 30, probs=True)
    copies = [a.copy() for a in (x, w, b, t)]
    mlecore.linear_cross_entropy_with_grad(x, w, t, b, softcap=1.0, chunk_size=3)
    for a, c in zip((x, w, b, t), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_bad_input_gets_clear_errors(rng):
    x, w, b, t = _problem(rng, 5, 4, 6)
    with pytest.raises(ValueError, match="must agree on D"):
        mlecore.linear_cross_entropy(x[:, :3], w, t)
    with pytest.raises(ValueError, match=r"w must have shape \(C, D\)"):
        mlecore.linear_cross_entropy(x, w[0], t)
    with pytest.raises(ValueError, match="bias must have shape"):
        mlecore.linear_cross_entropy(x, w, t, b[:2])
    bad = t.copy()
    bad[3] = 6
    with pytest.raises(IndexError, match=r"target\[3\] = 6"):
        mlecore.linear_cross_entropy_with_grad(x, w, bad)
    with pytest.raises(ValueError, match="softcap"):
        mlecore.linear_cross_entropy(x, w, t, softcap=0.0)
    with pytest.raises(ValueError, match="lse_square_scale"):
        mlecore.linear_cross_entropy(x, w, t, lse_square_scale=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        mlecore.linear_cross_entropy(x, w, t, chunk_size=0)
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        mlecore.linear_cross_entropy(x, w, t[:4])


def test_chunk_rule():
    # 2048 rows (the products' speed) up to 256 MiB, 128 MiB where rows are short; spread
    # evenly; never more rows than there are.
    assert _linear_chunks.chunk_rows(2048, 50257, 4, None) == 1024
    assert _linear_chunks.chunk_rows(8192, 32000, 4, None) == 2048
    assert _linear_chunks.chunk_rows(3000, 50257, 4, None) == 1000
    assert _linear_chunks.chunk_rows(10, 50257, 4, None) == 10
    assert _linear_chunks.chunk_rows(0, 50257, 4, None) == 1
    assert _linear_chunks.chunk_rows(4096, 262144, 4, None) == 256
    assert _linear_chunks.chunk_rows(100, 10**9, 4, None) == 15  # 7 chunks of at most 16
    assert _linear_chunks.chunk_rows(10**7, 10, 4, None) == 10**7 // 3 + 1
    assert _linear_chunks.chunk_rows(100, 10, 4, 7) == 7


def test_memory_stays_one_chunk_where_the_logits_would_be_large(rng):
    # N·C = 2^29: the logits alone would be 2 GiB in float32, their gradient as much again.
    n, d, c = 16384, 16, 32768
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((c, d), dtype=np.float32) * 0.1
    t = rng.integers(0, c, n)
    dx, dw = np.empty_like(x), np.empty_like(w)
    tracemalloc.start()
    try:
        mlecore.linear_cross_entropy_with_grad(x, w, t, out=(dx, dw))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    materialized = 2 * n * c * 4
    chunk = _linear_chunks.chunk_rows(n, c, 4, None) * c * 4
    assert chunk == 256 << 20
    assert peak <= chunk + 64 * n + (4 << 20), (peak, chunk)
    assert peak * 8 <= materialized, (peak, materialized)


def test_out_buffers_that_overlap_each_other_are_refused(rng):
    """Gradients written into overlapping buffers came back wrong, silently; a dx of the
    transposed shape was accepted."""
    x, w, b, t = _problem(rng, 6, 6, 6)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    both = np.empty(2 * 36, np.float32)
    halves = both[:36].reshape(6, 6), both[18:54].reshape(6, 6)  # overlapping ranges
    tail = np.empty(36 + 3, np.float32)
    cases = [((dx, dx, db), "dx and dw share memory"),
             ((halves[0], halves[1], db), "dx and dw share memory"),
             ((dx, tail[:36].reshape(6, 6), tail[33:]), "dw and dbias share memory")]
    for out, msg in cases:
        with pytest.raises(ValueError, match=msg):
            mlecore.linear_cross_entropy_with_grad(x, w, t, b, out=out)
    xt = rng.standard_normal((4, 6)).astype(np.float32)  # N = 4, D = 6: dx (6, 4) is wrong
    with pytest.raises(ValueError, match=r"dx must be an array of shape \(4, 6\)"):
        mlecore.linear_cross_entropy_with_grad(xt, w, t[:4], b, out=(np.empty((6, 4),
                                                                             np.float32), dw))
    # Disjoint buffers, also cut from one array, are fine; an unbatched dx keeps x's shape.
    pool = np.empty(36 + 36 + 6, np.float32)
    out = pool[:36].reshape(6, 6), pool[36:72].reshape(6, 6), pool[72:]
    loss, gx, gw, gb = mlecore.linear_cross_entropy_with_grad(x, w, t, b, out=out)
    _, g = numpy_ce_grad(_logits(x, w, b), t)
    np.testing.assert_allclose(gw, g.T @ x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gx, g @ w, rtol=1e-4, atol=1e-6)
    one = np.empty(6, np.float32)
    _, g1, _, _ = mlecore.linear_cross_entropy_with_grad(x[0], w, t[0], b, out=(one, dw, db))
    assert g1 is one


def test_zero_features_give_log_c(rng):
    """D = 0: the logits are the bias (or zeros); reshaping the rows failed ("cannot reshape
    array of size 0"), where torch returns log C."""
    for b in (None, rng.standard_normal(7).astype(np.float32)):
        x, w = np.zeros((5, 0), np.float32), np.zeros((7, 0), np.float32)
        t = rng.integers(0, 7, 5)
        z = np.zeros((5, 7)) if b is None else np.tile(b.astype(np.float64), (5, 1))
        want, g = numpy_ce_grad(z, t)
        for chunk in (None, 2):
            loss, dx, dw, db = mlecore.linear_cross_entropy_with_grad(x, w, t, b,
                                                                      chunk_size=chunk)
            np.testing.assert_allclose(loss, want, rtol=1e-6)
            assert dx.shape == (5, 0) and dw.shape == (7, 0)
            if b is not None:
                np.testing.assert_allclose(db, g.sum(0), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(mlecore.linear_cross_entropy(x, w, t, b,
                                                                    chunk_size=chunk),
                                       want, rtol=1e-6)
    assert mlecore.linear_cross_entropy(np.zeros((3, 0)), np.zeros((4, 0)),
                                        np.array([0, 1, 3])) == pytest.approx(np.log(4))
