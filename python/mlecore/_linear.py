"""`linear_cross_entropy` and `linear_cross_entropy_with_grad` for numpy arrays: validation,
the chunk loop of `_linear_chunks`, and results in the caller's shapes and dtypes.

Torch tensors are handed to `mlecore.torch.linear_cross_entropy`.
"""

from __future__ import annotations

import math

import numpy as np

from . import _spec
from ._arrays import (
    as_float_array,
    class_weights,
    compute_dtype,
    label_mask,
    loss_stats,
    native,
)
from ._linear_chunks import Grads, Linear, Pass, chunk_rows, run


def prepare(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, softcap,
            lse_square_scale, chunk_size) -> Linear:
    """Validates a numpy linear cross-entropy call."""
    if any(_spec.is_dask(a) for a in (x, w, target, bias, weight)):
        # numpy would compute the whole graph (blocks more than once) and return numpy.
        raise TypeError("linear_cross_entropy and linear_cross_entropy_with_grad take numpy "
                        "arrays and tensors, not Dask arrays: compute x and w first, or "
                        "give cross_entropy the Dask logits (lazy)")
    reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
    softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
    chunk_size = _spec.check_chunk_size(chunk_size)
    xa = as_float_array(x, "x")
    wa = as_float_array(w, "w")
    if wa.ndim != 2:
        raise ValueError(f"w must have shape (C, D), one row per class, got {wa.shape}")
    if xa.ndim not in (1, 2):
        raise ValueError(f"x must have shape (N, D) or (D,), got {xa.shape}")
    if xa.shape[-1] != wa.shape[1]:
        raise ValueError(f"x has {xa.shape[-1]} features and w has {wa.shape[1]}: "
                         f"x {xa.shape} and w {wa.shape} must agree on D")
    dtype = np.result_type(xa, wa)
    cdt = compute_dtype(dtype)  # float16 is computed in float32, as everywhere
    classes = wa.shape[0]
    t = native(np.asarray(target))
    is_index = _spec.target_is_index(t.dtype.kind, t.dtype)
    logits_shape = xa.shape[:-1] + (classes,)
    _, loss_shape = _spec.class_layout(logits_shape, t.shape, is_index)
    b = None
    if bias is not None:
        b = np.ascontiguousarray(as_float_array(bias, "bias"), dtype=cdt)
        if b.shape != (classes,):
            raise ValueError(f"bias must have shape ({classes},), one per class, got {b.shape}")
    # The row count given, not -1: a reshape cannot infer it from zero features.
    xa = np.ascontiguousarray(xa.reshape(math.prod(xa.shape[:-1]), xa.shape[-1]), dtype=cdt)
    wa = np.ascontiguousarray(wa, dtype=cdt)
    if is_index:
        rows_t = np.ascontiguousarray(t.reshape(-1))
    else:
        rows_t = np.ascontiguousarray(t.reshape(-1, classes), dtype=cdt)
    cw = None if weight is None else class_weights(weight, classes, cdt)
    n = xa.shape[0]
    chunk = chunk_rows(n, classes, np.dtype(cdt).itemsize, chunk_size)
    return Linear(xa, wa, b, rows_t, cw, ignore, eps, softcap, z, reduction, chunk, is_index,
                  t.shape, loss_shape, dtype)


def finish(p: Linear, result: Pass, stats: bool):
    """The reduced loss in the input's dtype, or its `CrossEntropyStats`."""
    def reduce(rows, total):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = _spec.reduce_loss(rows, np.float64(total), np.float64(result.denom),
                                  p.reduction, p.loss_shape)
        return r.astype(p.dtype) if p.reduction == "none" else p.dtype.type(r)

    reduced = reduce(result.loss, result.total)
    if not stats:
        return reduced
    counted = (label_mask(p.target, p.ignore_index) if p.is_index
               else np.ones(len(result.loss), bool))
    return loss_stats(reduced, result.lse, np.asarray(result.hits).astype(bool), counted,
                      p.lse_square_scale, reduce, p.loss_shape, p.dtype)


def linear_cross_entropy(x, w, target, bias=None, *, weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, softcap=None,
                         lse_square_scale=0.0, chunk_size=None, return_stats=False):
    """Cross-entropy of the logits ``x @ w.T + bias``, computed in chunks of rows so that
    the (N, C) logits never exist.

    Parameters
    ----------
    x : array_like
        Inputs (N, D), or one input (D,): the last hidden states of a language model, say.
    w : array_like
        The projection (C, D), one row per class (torch's layout, as `nn.Linear.weight`).
    target : array_like
        Class indices (N,) (or () for one input), any integer dtype; or class probabilities
        (N, C).
    bias : array_like, optional
        (C,), added to the logits.
    weight, ignore_index, reduction, label_smoothing, softcap, lse_square_scale,
    return_stats
        As in `mlecore.cross_entropy`.
    chunk_size : int, optional
        Rows per chunk; by default 2048 rows (fewer where that passes 256 MiB of logits,
        more where rows are short: logits of 128 MiB), spread evenly over the chunks.

    Returns
    -------
    scalar or ndarray or CrossEntropyStats
        As `mlecore.cross_entropy` returns it for the logits ``x @ w.T + bias``.

    Notes
    -----
    float32 and float64 are computed in their precision; float16 in float32 (x and w are
    converted once). Memory beyond the inputs: one chunk of logits and per-row results.

    Examples
    --------
    >>> import numpy as np, mlecore
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> y = rng.integers(0, 10, 6)
    >>> bool(np.isclose(mlecore.linear_cross_entropy(x, w, y, chunk_size=4),
    ...                 mlecore.cross_entropy(x @ w.T, y)))
    True
    """
    if _spec.is_tensor(x):
        from .torch import linear_cross_entropy as torch_linear_cross_entropy

        return torch_linear_cross_entropy(
            x, w, target, linear_bias=bias, weight=weight, reduction=reduction,
            ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap,
            lse_square_scale=lse_square_scale, chunk_size=chunk_size,
            return_stats=return_stats)
    p = prepare(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, softcap,
                lse_square_scale, chunk_size)
    return finish(p, run(p, return_stats), return_stats)


def linear_cross_entropy_with_grad(x, w, target, bias=None, *, weight=None, ignore_index=-100,
                                   reduction="mean", label_smoothing=0.0, softcap=None,
                                   lse_square_scale=0.0, chunk_size=None, return_stats=False,
                                   out=None):
    """`linear_cross_entropy` and its gradients with respect to x, w and bias, from one
    pass over the chunks.

    Parameters
    ----------
    x, w, target, bias, weight, ignore_index, reduction, label_smoothing, softcap,
    lse_square_scale, chunk_size, return_stats
        As in `linear_cross_entropy`.
    out : tuple of ndarray, optional
        (dx, dw) or (dx, dw, dbias): caller's buffers of the shapes of x, w and bias, in
        the compute dtype (float32 or float64), C-contiguous. dw and dbias are overwritten.

    Returns
    -------
    loss : scalar or ndarray or CrossEntropyStats
        As `linear_cross_entropy`.
    dx, dw, dbias : ndarray
        The gradients of the reduced loss (of ``loss.sum()`` for reduction="none"), of the
        shapes of x, w and bias; dbias is None without a bias. dw and dbias are accumulated
        over the chunks in the compute dtype (float32 for float16 input) and float64.

    Examples
    --------
    >>> import numpy as np, mlecore
    >>> rng = np.random.default_rng(1)
    >>> x, w, b = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)), np.zeros(7)
    >>> y = np.array([0, 6, 2, 2, 1])
    >>> loss, dx, dw, db = mlecore.linear_cross_entropy_with_grad(x, w, y, b)
    >>> _, g = mlecore.cross_entropy_with_grad(x @ w.T + b, y)
    >>> bool(np.allclose(dx, g @ w) and np.allclose(dw, g.T @ x) and np.allclose(db, g.sum(0)))
    True
    """
    if _spec.is_tensor(x):
        raise TypeError("linear_cross_entropy_with_grad takes numpy arrays; for torch tensors "
                        "use mlecore.torch.linear_cross_entropy, whose backward pass reuses "
                        "the gradients of its forward pass")
    p = prepare(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, softcap,
                lse_square_scale, chunk_size)
    grads = Grads.allocate(p) if out is None else _check_out(p, out, x, w, target, bias, weight)
    if grads.db is None and p.b is not None:  # out=(dx, dw): dbias is still returned
        grads.db = np.empty(p.classes, np.float64)
    result = finish(p, run(p, return_stats, grads), return_stats)
    dx = out[0] if out is not None else grads.dx.reshape(np.shape(x))
    dw, db = grads.dw, grads.db
    if out is None and p.dtype != p.x.dtype:  # float16 input: gradients as float16
        dx, dw = dx.astype(p.dtype), dw.astype(p.dtype)
    if db is not None and (out is None or len(out) < 3):
        db = db.astype(p.dtype)
    return result, dx, dw, db


def _check_out(p: Linear, out, x, *reads) -> Grads:
    """Caller's (dx, dw[, db]) buffers: shapes (dx x's own, or its rows (N, D)), dtype,
    layout, and no memory shared with the arrays the pass reads or with each other (by
    memory range: each buffer is written while the others are)."""
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise TypeError("out must be a tuple (dx, dw) or (dx, dw, dbias) of arrays")
    n, d = p.x.shape
    shapes = [(n, d), (p.classes, d), (p.classes,)]
    names = ["dx", "dw", "dbias"]
    bufs = []
    for buf, shape, name in zip(out, shapes, names, strict=False):
        allowed = {shape, np.shape(x)} if name == "dx" else {shape}
        if not isinstance(buf, np.ndarray) or buf.shape not in allowed \
                or buf.dtype != p.x.dtype:
            raise ValueError(f"out's {name} must be an array of shape "
                             f"{' or '.join(map(str, sorted(allowed)))} and dtype {p.x.dtype}")
        if not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"out's {name} must be C-contiguous and writable")
        for r in (x, *reads):
            if isinstance(r, np.ndarray) and np.may_share_memory(buf, r):
                raise ValueError(f"out's {name} shares memory with an input")
        for earlier, other in zip(names, bufs, strict=False):
            if np.may_share_memory(buf, other):
                raise ValueError(f"out's {earlier} and {name} share memory: each gradient "
                                 "needs a buffer of its own")
        bufs.append(buf if buf.shape == shape else buf.reshape(shape))
    if len(bufs) == 3 and p.b is None:
        raise ValueError("out has a dbias buffer but there is no bias")
    return Grads(*bufs)
