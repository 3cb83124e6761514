"""The numpy API under hostile use: aliasing by memory, not by object; misaligned memory;
no classes; bad thread counts. Clear exceptions, never a crash or a PanicException."""

import numpy as np
import pytest

import mlecore


def _views_of_one_buffer(nbytes):
    """Two arrays over the same memory with different base objects (as from two
    np.frombuffer calls), which numpy's and PyO3's borrow tracking do not connect."""
    buf = bytearray(nbytes)
    return np.frombuffer(buf, np.uint8), np.frombuffer(memoryview(buf), np.uint8)


def test_out_sharing_memory_with_targets_or_weights_is_refused_not_a_crash():
    a, b = _views_of_one_buffer(4 * 5 * 8 + 64)
    out = a[: 4 * 5 * 8].view(np.float64).reshape(4, 5)
    labels = b[: 4 * 8].view(np.int64)  # the same memory as out's first row
    x = np.random.default_rng(0).standard_normal((4, 5))
    with pytest.raises(ValueError, match="out overlaps target"):
        mlecore.cross_entropy_with_grad(x, labels, out=out)
    probs = mlecore.softmax(x, axis=1)
    with pytest.raises(ValueError, match="out overlaps target"):
        mlecore.cross_entropy_with_grad(x, probs, out=probs)
    w = np.ones(25)
    with pytest.raises(ValueError, match="out overlaps weight"):
        mlecore.cross_entropy_with_grad(x, np.arange(4), weight=w[:5], out=w[:20].reshape(4, 5))


def _misaligned(arr):
    """`arr`'s values in memory that starts one byte off its type's alignment."""
    buf = bytearray(arr.nbytes + 1)
    out = np.frombuffer(buf, arr.dtype, count=arr.size, offset=1).reshape(arr.shape)
    out[...] = arr
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_misaligned_memory_is_read_as_numpy_reads_it(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 7)).astype(dtype)
    y = rng.integers(0, 7, 6)
    p = mlecore.softmax(rng.standard_normal((6, 7)), axis=1).astype(dtype)
    xm, ym, pm = _misaligned(x), _misaligned(y), _misaligned(p)
    for fn in (mlecore.logsumexp, mlecore.softmax, mlecore.log_softmax):
        np.testing.assert_array_equal(fn(xm, axis=1), fn(x, axis=1))
        np.testing.assert_array_equal(fn(xm, axis=0), fn(x, axis=0))
    assert mlecore.cross_entropy(xm, ym) == mlecore.cross_entropy(x, y)
    assert mlecore.cross_entropy(xm, pm) == mlecore.cross_entropy(x, p)
    assert mlecore.nll_loss(xm, ym) == mlecore.nll_loss(x, y)
    np.testing.assert_array_equal(mlecore.cross_entropy_with_grad(xm, ym)[1],
                                  mlecore.cross_entropy_with_grad(x, y)[1])
    out = _misaligned(np.zeros_like(x))
    mlecore.cross_entropy_with_grad(x, y, out=out)
    np.testing.assert_array_equal(out, mlecore.cross_entropy_with_grad(x, y)[1])


@pytest.mark.parametrize("shape, target", [
    ((3, 0), np.full(3, -100)), ((0,), np.int64(-100)), ((2, 0, 3), np.full((2, 3), -100)),
    ((3, 0), np.zeros((3, 0))), ((2, 0, 3), np.zeros((2, 0, 3))),
])
def test_no_classes(shape, target):
    x = np.zeros(shape)
    loss = mlecore.cross_entropy(x, target, reduction="none")
    assert loss.shape == np.shape(target)[: max(len(shape) - 1, 0)] or loss.shape == (
        () if len(shape) == 1 else (shape[0],) + shape[2:])
    assert (loss == 0).all()
    _, g = mlecore.cross_entropy_with_grad(x, target)
    assert g.shape == x.shape
    if np.asarray(target).dtype.kind == "i":
        assert (mlecore.nll_loss(x, target, reduction="none") == 0).all()
        with pytest.raises(IndexError, match=r"expected a class index in \[0, 0\)"):
            mlecore.cross_entropy(x, np.zeros_like(target))


@pytest.mark.parametrize("n", [-1, 0, 2**70, 10**6, 2.5, "3"])
def test_bad_thread_counts_are_value_or_type_errors(n):
    before = mlecore.get_num_threads()
    with pytest.raises((ValueError, TypeError)):
        mlecore.set_num_threads(n)
    assert mlecore.get_num_threads() == before


def test_index_like_axes():
    x = np.random.default_rng(2).standard_normal((3, 4))
    for fn in (mlecore.logsumexp, mlecore.softmax, mlecore.log_softmax):
        np.testing.assert_array_equal(fn(x, axis=np.int64(1)), fn(x, axis=1))
