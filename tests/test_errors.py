"""Bad input gets a clear exception that says what was expected, and changes nothing."""

import numpy as np
import pytest

import mlecore


@pytest.fixture
def x():
    return np.arange(12, dtype=np.float32).reshape(4, 3) / 10


@pytest.mark.parametrize("fn", [mlecore.cross_entropy, mlecore.nll_loss,
                                lambda i, t: mlecore.cross_entropy_with_grad(i, t)])
def test_out_of_range_label_names_value_position_and_range(x, fn):
    keep = x.copy()
    with pytest.raises(IndexError, match=r"Target 5 is out of bounds: target\[2\] = 5, "
                                         r"expected a class index in \[0, 3\)"):
        fn(x, np.array([0, 1, 5, 2]))
    with pytest.raises(IndexError, match=r"Target -1 is out of bounds: target\[1\] = -1"):
        fn(x, np.array([0, -1, 0, 2]))
    np.testing.assert_array_equal(x, keep)


def test_out_of_range_in_k_dim_and_unsigned_targets(x):
    xk = np.zeros((2, 3, 2, 2))
    y = np.zeros((2, 2, 2), np.int64)
    y[1, 0, 1] = 3
    with pytest.raises(IndexError, match=r"target\[1, 0, 1\] = 3"):
        mlecore.cross_entropy(xk, y)
    big = np.array([0, 2**64 - 1, 0, 0], np.uint64)
    with pytest.raises(IndexError, match=f"Target {2**64 - 1} is out of bounds"):
        mlecore.cross_entropy(x, big)
    with pytest.raises(IndexError, match=r"target = 3"):
        mlecore.cross_entropy(np.zeros(3), np.int64(3))


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(target=np.zeros(3, np.int64)), ValueError, r"shape \(4,\).*got \(3,\)"),
    (dict(target=np.zeros((4, 2))), ValueError, r"input's shape \(4, 3\), got \(4, 2\)"),
    (dict(weight=np.ones(2)), ValueError, r"weight must have shape \(3,\)"),
    (dict(label_smoothing=-0.1), ValueError, r"label_smoothing must be in \[0, 1\]"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
    (dict(reduction="avg"), ValueError, "reduction must be"),
    (dict(target=np.zeros(4, bool)), TypeError, "class indices"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
])
def test_bad_options(x, kwargs, exc, msg):
    kw = dict(target=np.zeros(4, np.int64)) | kwargs
    with pytest.raises(exc, match=msg):
        mlecore.cross_entropy(x, **kw)


def test_bad_inputs():
    with pytest.raises(ValueError, match="0-d"):
        mlecore.cross_entropy(np.float32(1.0), np.int64(0))
    with pytest.raises(TypeError, match="complex"):
        mlecore.cross_entropy(np.ones((2, 2), complex), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="real numeric"):
        mlecore.cross_entropy(np.array([[object()]]), np.zeros(1, np.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        mlecore.nll_loss(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="backend"):
        mlecore.logsumexp(np.ones(3), backend="cuda")
    with pytest.raises(ValueError, match="needs torch tensors"):
        mlecore.cross_entropy(np.ones((2, 2)), np.zeros(2, np.int64), backend="torch")


def test_compiled_layer_rejects_what_the_package_would_never_send():
    from mlecore import _mlecore as ext

    with pytest.raises(ValueError, match="C-contiguous"):
        ext.logsumexp_rows(np.ones((3, 4))[:, ::2], 2, np.empty(3))
    with pytest.raises(TypeError, match="kernels take float32"):
        ext.logsumexp_rows(np.ones((3, 4), np.int32), 4, np.empty(3, np.int32))
    with pytest.raises(ValueError, match="elements"):
        ext.logsumexp_rows(np.ones((3, 4)), 4, np.empty(2))
    with pytest.raises(TypeError, match="out must hold float64, got float32"):
        ext.logsumexp_rows(np.ones((3, 4)), 4, np.empty(3, np.float32))
    read_only = np.empty(3)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        ext.logsumexp_rows(np.ones((3, 4)), 4, read_only)
    # The tuple form (a tensor's address, element count and dtype code).
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match="unknown dtype code 99"):
        ext.logsumexp_rows((x.ctypes.data, 12, 99, x), 4, np.empty(3))
    with pytest.raises(ValueError, match="aligned to 8 bytes"):
        ext.logsumexp_rows((x.ctypes.data + 1, 12, 1, x), 4, np.empty(3))
    with pytest.raises(TypeError, match="numpy array or"):
        ext.logsumexp_rows([1.0, 2.0], 2, np.empty(1))
    with pytest.raises(TypeError, match="numpy array or"):
        ext.logsumexp_rows((x.ctypes.data, 12, 1), 4, np.empty(3))  # no owner
    with pytest.raises(TypeError, match="class indices or probabilities of the input's"):
        ext.cross_entropy_rows((x, x.shape, np.zeros(3, np.float32), None, -100, 0.0, 0.0))
    with pytest.raises(ValueError, match="at least 1"):
        mlecore.set_num_threads(0)
