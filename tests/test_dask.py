"""Dask arrays through mlecore's functions on a LocalCluster of two worker processes:
lazy results equal to the numpy path on every chunking, errors with global positions, and an
out-of-core run over an array larger than the workers' memory."""

import subprocess
import sys

import dask.array as da
import distributed
import numpy as np
import pytest

import mlecore

CHUNKINGS = [(-1, -1), (5, 1), ((3, 5, 5), (2, 1, 4)), ((13,), (6, 1))]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _problem(rng, dtype=np.float32):
    x = (rng.standard_normal((13, 7)) * 3).astype(dtype)
    y = rng.integers(0, 7, 13)
    y[::4] = -100
    return x, y


def _close(a, b, dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions_equal_the_numpy_path(client, rng, chunks, dtype):
    x, _ = _problem(rng, dtype)
    x[2, 3] = -np.inf
    d = da.from_array(x, chunks=chunks)
    for axis in (1, 0, None, (0, 1)):
        for keepdims in (False, True):
            got = mlecore.logsumexp(d, axis=axis, keepdims=keepdims)
            assert isinstance(got, da.Array)
            r = got.compute()
            _close(r, mlecore.logsumexp(x, axis=axis, keepdims=keepdims), dtype)
            assert r.dtype == dtype
    for f in (mlecore.softmax, mlecore.log_softmax):
        for axis in (1, 0):
            _close(f(d, axis=axis).compute(), f(x, axis=axis), dtype)


OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.15, "weight": "w"},
    {"softcap": 2.0, "lse_square_scale": 1e-2},
    {"ignore_index": 5},
]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("options", range(len(OPTIONS)))
def test_losses_equal_the_numpy_path(client, rng, chunks, options):
    x, y = _problem(rng)
    kw = dict(OPTIONS[options])
    if kw.get("weight") == "w":
        kw["weight"] = rng.random(7) + 0.5
    if "ignore_index" in kw:
        y = np.where(y == -100, kw["ignore_index"], y)
    d = da.from_array(x, chunks=chunks)
    want = mlecore.cross_entropy(x, y, **kw)
    for target in (y, da.from_array(y, chunks=4)):
        got = mlecore.cross_entropy(d, target, **kw)
        assert isinstance(got, da.Array)
        _close(got.compute(), want, np.float32)
    p = rng.dirichlet(np.ones(7), 13).astype(np.float32)
    pkw = {k: v for k, v in kw.items() if k != "ignore_index"}
    _close(mlecore.cross_entropy(d, da.from_array(p, chunks=chunks), **pkw).compute(),
           mlecore.cross_entropy(x, p, **pkw), np.float32)
    logp = mlecore.log_softmax(x, axis=1)
    nkw = {k: v for k, v in kw.items() if k in ("reduction", "weight", "ignore_index")}
    _close(mlecore.nll_loss(da.from_array(logp, chunks=chunks), y, **nkw).compute(),
           mlecore.nll_loss(logp, y, **nkw), np.float32)


def test_bad_labels_name_their_global_position(client, rng):
    x, y = _problem(rng)
    y[9] = 7
    with pytest.raises(IndexError, match=r"target\[9\] = 7"):
        mlecore.cross_entropy(da.from_array(x, chunks=4), y)  # numpy target: at once
    lazy = mlecore.cross_entropy(da.from_array(x, chunks=4), da.from_array(y, chunks=4))
    with pytest.raises(IndexError, match=r"target\[9\] = 7"):
        lazy.compute()
    with pytest.raises(TypeError, match="Dask"):
        mlecore.cross_entropy_with_grad(da.from_array(x), y)


def test_import_mlecore_imports_no_dask():
    code = "import sys, mlecore; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Memmapped:
    """A float32 file as an array dask can slice: each task maps the file itself (the array
    is not pickled into the graph) and copies only its block out."""

    def __init__(self, path, shape):
        self.path, self.shape, self.dtype, self.ndim = path, shape, np.dtype(np.float32), 2

    def __getitem__(self, key):
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return np.array(mm[key])
        finally:
            del mm


def test_an_array_larger_than_the_workers_memory(tmp_path):
    # 4 GiB of logits on disk, two workers of 1 GiB each: the reduction streams blocks of
    # 64 MiB and keeps only per-row partials.
    rows, classes = 1 << 20, 1024
    path = tmp_path / "logits.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, classes))
    rng = np.random.default_rng(0)
    step = 1 << 16
    block = rng.standard_normal((step, classes), dtype=np.float32)
    for i in range(0, rows, step):
        mm[i:i + step] = block + np.float32(i / rows)  # rows differ from block to block
    mm.flush()
    del mm
    labels = (np.arange(rows) * 7919) % classes
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit="1GiB", host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        x = da.from_array(_Memmapped(str(path), (rows, classes)), chunks=(step // 4, classes))
        assert x.nbytes >= 4 * 2**30
        lse_total, loss = da.compute(mlecore.logsumexp(x, axis=1).sum(dtype=np.float64),
                                     mlecore.cross_entropy(x, labels))
    # The same from the one block the file repeats (with its per-block offsets).
    lse_block = mlecore.logsumexp(block, axis=1).astype(np.float64)
    offsets = np.arange(0, rows, step) / rows
    expected = sum(lse_block.sum() + step * np.float32(o) for o in offsets)
    np.testing.assert_allclose(lse_total, expected, rtol=1e-6)
    picked = block[np.arange(step), labels[:step]]
    per_block = lse_block - picked  # the offsets cancel in lse − x_y, labels repeat by block
    np.testing.assert_allclose(loss, per_block.mean(), rtol=1e-5)


def test_unknown_chunk_sizes_are_handled_as_the_numpy_path(client, rng):
    """After boolean indexing dask knows no row counts: cross_entropy and nll_loss said
    "must have shape (nan,) ... got (nan,)"; now they compute, and what cannot be checked
    before computing is checked block by block."""
    x, y = _problem(rng, np.float64)
    y[12] = 3
    p = rng.random((13, 7))
    p /= p.sum(axis=1, keepdims=True)
    keep = np.arange(13) % 3 != 1
    dx, dy, dp = (da.from_array(a, chunks=(5, 3)[:a.ndim]) for a in (x, y, p))
    mask = da.from_array(keep, chunks=5)
    assert np.isnan(dx[mask].shape[0])
    for kw in ({}, {"reduction": "sum", "label_smoothing": 0.1}, {"reduction": "none"},
               {"weight": np.arange(1.0, 8.0)}):
        for target, plain in ((dy, y), (dp, p)):
            _close(mlecore.cross_entropy(dx[mask], target[mask], **kw).compute(),
                   mlecore.cross_entropy(x[keep], plain[keep], **kw), np.float64)
        kw.pop("label_smoothing", None)
        _close(mlecore.nll_loss(dx[mask], dy[mask], **kw).compute(),
               mlecore.nll_loss(x[keep], y[keep], **kw), np.float64)
    with pytest.raises(ValueError, match="must be chunked alike"):
        mlecore.cross_entropy(dx[mask], y[keep])
    with pytest.raises(ValueError, match="class axis of a Dask input must have a known"):
        mlecore.cross_entropy(dx[mask][:, 0], da.from_array(np.int64(0)))
    with pytest.raises(ValueError, match="the target's block 1 holds 2 rows where the "
                                         "input's holds 4"):
        mlecore.cross_entropy(dx[mask], dy[da.from_array(np.arange(13) % 2 == 0,
                                                         chunks=5)]).compute()
    bad = y.copy()
    bad[12] = 9
    with pytest.raises(IndexError, match=r"Target 9 is out of bounds: element 1 of the "
                                         r"target's block 2 \(of unknown offset"):
        mlecore.cross_entropy(dx[mask], da.from_array(bad, chunks=5)[mask]).compute()


def test_a_0d_array_keeps_its_declared_shape(client):
    """logsumexp, softmax and log_softmax of a 0-d Dask array declared shape () and
    computed (1,); now both are the numpy path's shape."""
    z = np.float32(2.5)
    for f in (mlecore.logsumexp, mlecore.softmax, mlecore.log_softmax):
        for kw in ({}, {"keepdims": True}) if f is mlecore.logsumexp else ({},):
            lazy = f(da.from_array(z), **kw)
            got, want = lazy.compute(), f(z, **kw)
            assert lazy.shape == np.shape(got) == np.shape(want), (f, kw)
            np.testing.assert_allclose(got, want)
            assert got.dtype == np.float32


def test_the_fused_linear_loss_refuses_dask_arrays(rng):
    """Given a Dask x or w, the fused linear loss computed the whole graph (blocks more than
    once) and returned numpy; it refuses them as cross_entropy_with_grad does."""
    x, w, y = rng.standard_normal((6, 3)), rng.standard_normal((4, 3)), np.arange(6) % 4
    for args in ((da.from_array(x), w, y), (x, da.from_array(w), y),
                 (x, w, da.from_array(y))):
        for f in (mlecore.linear_cross_entropy, mlecore.linear_cross_entropy_with_grad):
            with pytest.raises(TypeError, match="not Dask arrays"):
                f(*args)
