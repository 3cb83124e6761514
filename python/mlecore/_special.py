"""scipy.special's logsumexp, softmax and log_softmax, on the Rust kernels."""

from __future__ import annotations

import numpy as np

from . import _mlecore as _ext
from . import _spec
from ._arrays import as_float_array, as_rows, axes_of, plain_rows
from ._kernels import logsumexp_over


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _scalar(r: np.ndarray):
    return r[()] if r.ndim == 0 else r


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False, *, backend="auto"):
    """Compute log(sum(b * exp(a))) stably: a drop-in for `scipy.special.logsumexp`.

    Parameters
    ----------
    a : array_like, torch.Tensor or dask.array.Array
        Input values. float32 and float64 are computed in their own precision, float16 with
        float32 accumulation; integers and bools become float64. Complex input is rejected
        (scipy accepts it). A Dask array gives a lazy Dask array (no `b`, `return_sign`).
    axis : None or int or tuple of ints, optional
        Axes to reduce over; all of them by default.
    b : array_like, optional
        Scale factors for exp(`a`), broadcastable to `a`. Zeros mask their element, even an
        infinite or NaN one; negatives are allowed (see `return_sign`).
    keepdims : bool, optional
        Keep the reduced axes with size one.
    return_sign : bool, optional
        Also return the sign of the sum; otherwise a negative sum gives NaN.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs (see `mlecore.torch`).

    Returns
    -------
    res : ndarray or scalar
        The log of the sum of exponentials, in the input's float dtype. An empty reduction
        gives -inf, a NaN gives NaN, and +inf gives +inf.
    sgn : ndarray or scalar
        With `return_sign`: +1, 0 or -1, the sign of the sum.

    Notes
    -----
    Full precision where one term dominates: ``logsumexp([0, -40])`` is 4.248e-18, like
    scipy (torch and jax give 0).

    Examples
    --------
    >>> import mlecore
    >>> float(mlecore.logsumexp([0.0, -40.0]))
    4.248354255291589e-18
    >>> mlecore.logsumexp([[1.0, 2.0], [3.0, 4.0]], axis=1)
    array([2.31326169, 4.31326169])
    >>> mlecore.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    """
    if (b is None and not keepdims and not return_sign and (axis == 1 or axis == -1)
            and backend != "torch" and plain_rows(a)):
        # The common call in a few microseconds: the general path below gives the same.
        _spec.check_backend(backend)
        out = np.empty(a.shape[0], a.dtype)
        _ext.logsumexp_rows(a, a.shape[1], out)
        return out
    if _spec.is_dask(a):
        from . import _dask

        _spec.numpy_backend(backend)
        return _dask.logsumexp(a, axis, b, keepdims, return_sign)
    if _spec.is_tensor(a):
        if b is not None or return_sign:
            raise ValueError("b and return_sign are supported for numpy input only")
        from .torch import logsumexp as torch_logsumexp

        return torch_logsumexp(a, axis, keepdim=keepdims, backend=backend)
    _spec.numpy_backend(backend)
    arr = as_float_array(a, "a")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    axes = axes_of(axis, arr.ndim)
    if b is not None:
        return _logsumexp_weighted(arr, b, axes, keepdims, return_sign)
    res = logsumexp_over(arr, axes).reshape(_reduced_shape(arr.shape, axes, keepdims))
    if not return_sign:
        return _scalar(res)
    sgn = np.where(np.isnan(res), np.nan, np.where(res == -np.inf, 0.0, 1.0)).astype(res.dtype)
    if arr.size == 0:
        sgn = np.sign(res)  # scipy's convention for an empty input: sign(-inf) = -1
    return _scalar(res), _scalar(sgn)


def _logsumexp_weighted(a, b, axes, keepdims, return_sign):
    """The `b` form, in numpy: log Σ b·e^a = a_max + log|m| + log1p(s/m), where m sums b
    over the maxima and s the rest, so a dominant term keeps full precision."""
    # A Python scalar is weakly typed: it does not promote float32 `a` to float64.
    b = b if isinstance(b, (int, float)) else np.asarray(b)
    if np.result_type(b).kind == "c":
        raise TypeError("b is complex; mlecore takes real input only")
    dtype = np.result_type(a, b)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    a, b = np.broadcast_arrays(a.astype(dtype, copy=False), np.asarray(b, dtype))
    shape = _reduced_shape(a.shape, axes, keepdims)
    if a.size == 0:
        out = np.full(shape, -np.inf, dtype)
        return (_scalar(out), _scalar(np.sign(out))) if return_sign else _scalar(out)
    with np.errstate(all="ignore"):
        a = np.where(b == 0, -np.inf, a)
        a_max = np.max(a, axis=axes, keepdims=True)
        is_max = a == a_max
        m = np.sum(np.where(is_max, b, 0), axis=axes, keepdims=True, dtype=dtype)
        shift = np.where(np.isfinite(a_max), a_max, 0)
        e = np.where(is_max | (b == 0), 0, b * np.exp(a - shift))
        s = np.sum(e, axis=axes, keepdims=True, dtype=dtype)
        s = np.where(s == 0, s, s / m)
        sgn = np.sign(s + 1) * np.sign(m)
        s = np.where(s < -1, -s - 2, s)
        out = np.log1p(s) + np.log(np.abs(m)) + a_max
        # Infinite maxima: the direct formula gives the C99 answers (inf, nan).
        direct = np.sum(np.where(b == 0, 0, b * np.exp(a)), axis=axes, keepdims=True)
        finite = np.isfinite(out)
        sgn = np.where(finite, sgn, np.sign(direct))
        out = np.where(finite, out, np.log(np.abs(direct) if return_sign else direct))
    if not return_sign:
        out = np.where(sgn < 0, np.nan, out)
    out, sgn = out.reshape(shape).astype(dtype), sgn.reshape(shape).astype(dtype)
    return (_scalar(out), _scalar(sgn)) if return_sign else _scalar(out)


def _softmax(x, axis, log: bool):
    if (axis == 1 or axis == -1) and plain_rows(x):  # the common call, without the layout
        out = np.empty_like(x)
        _ext.softmax_rows(x, x.shape[1], out, log)
        return out
    arr = as_float_array(x, "x")
    axes = axes_of(axis, arr.ndim)
    rows = as_rows(arr, axes)
    out = np.empty_like(rows.matrix)
    _ext.softmax_rows(rows.matrix, rows.matrix.shape[1], out, log)
    return _scalar(rows.restore(out))


def softmax(x, axis=None, *, backend="auto"):
    """Softmax, exp(x) / sum(exp(x)): a drop-in for `scipy.special.softmax`.

    Parameters
    ----------
    x : array_like, torch.Tensor or dask.array.Array
        Input values (dtype rules as in `logsumexp`); a Dask array gives a lazy one.
    axis : None or int or tuple of ints, optional
        Axes the softmax normalizes over; all of them by default.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs.

    Returns
    -------
    ndarray
        Same shape and float dtype as `x`. A row holding +inf or NaN is all NaN (as torch;
        scipy gives NaN only where the arithmetic does); an empty array gives an empty result
        (scipy raises).

    Examples
    --------
    >>> import mlecore
    >>> mlecore.softmax([0.0, 0.0, 0.0, 0.0])
    array([0.25, 0.25, 0.25, 0.25])
    """
    if type(x) is not np.ndarray and _spec.is_dask(x):
        from . import _dask

        _spec.numpy_backend(backend)
        return _dask.softmax(x, axis)
    if _spec.is_tensor(x):
        from .torch import softmax as torch_softmax

        return torch_softmax(x, axis, backend=backend)
    _spec.numpy_backend(backend)
    return _softmax(x, axis, log=False)


def log_softmax(x, axis=None, *, backend="auto"):
    """Logarithm of softmax, x - logsumexp(x): a drop-in for `scipy.special.log_softmax`.

    Parameters
    ----------
    x : array_like, torch.Tensor or dask.array.Array
        Input values (dtype rules as in `logsumexp`); a Dask array gives a lazy one.
    axis : None or int or tuple of ints, optional
        Axes the softmax normalizes over; all of them by default.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs.

    Returns
    -------
    ndarray
        Same shape and float dtype as `x`. A row holding +inf or NaN is all NaN, as torch
        (scipy gives [nan, -inf] for [inf, 0]).

    Examples
    --------
    >>> import mlecore
    >>> mlecore.log_softmax([1.0, 1.0])
    array([-0.69314718, -0.69314718])
    """
    if type(x) is not np.ndarray and _spec.is_dask(x):
        from . import _dask

        _spec.numpy_backend(backend)
        return _dask.log_softmax(x, axis)
    if _spec.is_tensor(x):
        from .torch import log_softmax as torch_log_softmax

        return torch_log_softmax(x, axis, backend=backend)
    _spec.numpy_backend(backend)
    return _softmax(x, axis, log=True)
