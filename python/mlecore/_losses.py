"""torch.nn.functional's cross_entropy and nll_loss for numpy arrays, on the Rust kernels.

Torch tensors are handed to `mlecore.torch`, which has the same functions.
"""

from __future__ import annotations

import numpy as np

from . import _mlecore as _ext
from . import _spec
from ._arrays import (
    as_float_array,
    as_rows,
    class_weights,
    compute_dtype,
    label_mask,
    loss_stats,
    native,
    plain_rows,
    prob_hits,
    softcap_into,
)
from ._kernels import CeRows, check_labels, reworded


class Problem:
    """A validated numpy cross-entropy call: the kernels' rows, and how to give results
    back in the caller's shapes."""

    def __init__(self, input, target, weight, ignore_index, reduction, label_smoothing,
                 softcap=None, lse_square_scale=0.0):
        self.reduction, eps, ignore = _spec.check_options(reduction, label_smoothing,
                                                          ignore_index)
        self.softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
        x = as_float_array(input)
        t = native(np.asarray(target))
        self.is_index = _spec.target_is_index(t.dtype.kind, t.dtype)
        n_classes, self.loss_shape = _spec.class_layout(x.shape, t.shape, self.is_index)
        target_shape = t.shape
        class_axis = (_spec.class_axis(x.ndim),)
        self.layout = as_rows(x, class_axis)
        if self.is_index:
            t = np.ascontiguousarray(t.reshape(-1))
        else:
            t = as_rows(t.astype(x.dtype, copy=False), class_axis).matrix
        w = None if weight is None else class_weights(weight, n_classes, compute_dtype(x.dtype))
        logits = self.layout.matrix
        if self.softcap is not None:
            # The loss sees c·tanh(z/c), computed in the compute dtype (a copy).
            if not self.is_index:
                t = t.astype(compute_dtype(x.dtype), copy=False)
            logits = softcapped(logits, self.softcap)
        self.rows = CeRows(logits, t, w, ignore, eps, z, target_shape, n_classes)
        self.dtype = x.dtype
        self.input_shape = x.shape

    def buffers(self, stats: bool = False):
        """Per-row losses (float64), log-sum-exps and (with `stats`) hits, for the kernels.
        The kernels judge class indices; a probability target's most probable class is
        judged here, before a pass can overwrite the logits."""
        n = self.rows.x.shape[0]
        hits = np.empty(n, np.uint8) if stats and self.is_index else None
        if stats and not self.is_index:
            self.judged = prob_hits(self.rows.x, self.rows.target)
        return np.empty(n), np.empty(n, compute_dtype(self.dtype)), hits

    def reduce(self, loss: np.ndarray, total: float, denom: float):
        """The loss in the input's dtype, reduced as asked."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r = _spec.reduce_loss(loss, np.float64(total), np.float64(denom), self.reduction,
                                  self.loss_shape)
        return r.astype(self.dtype) if self.reduction == "none" else self.dtype.type(r)

    def counted(self) -> np.ndarray:
        """The rows that count: not ignored (all rows of probability targets)."""
        if not self.is_index:
            return np.ones(self.rows.x.shape[0], bool)
        return label_mask(self.rows.target, self.rows.ignore_index)

    def finish(self, loss, lse, hits, total, denom, stats: bool):
        """The reduced loss, or with `stats` the `CrossEntropyStats` of the pass."""
        reduced = self.reduce(loss, total, denom)
        if not stats:
            return reduced
        right = hits.astype(bool) if hits is not None else self.judged
        return loss_stats(reduced, lse, right, self.counted(), self.rows.lse_square_scale,
                          lambda rows, t: self.reduce(rows, t, denom), self.loss_shape,
                          self.dtype)

    def chain(self, grad: np.ndarray) -> None:
        """The gradient through the soft-cap, in place: d(c·tanh(z/c))/dz = 1 − (s/c)²."""
        if self.softcap is not None:
            s = self.rows.x
            grad *= 1 - (s / self.softcap) ** 2


def softcapped(logits: np.ndarray, cap: float) -> np.ndarray:
    """c·tanh(z/c) in the compute dtype (float32 for float16), a new array."""
    z = logits.astype(compute_dtype(logits.dtype), copy=True)
    return softcap_into(z, cap, out=z)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, softcap=None, lse_square_scale=0.0,
                  return_stats=False, backend="auto"):
    """Cross-entropy between logits and a target, as `torch.nn.functional.cross_entropy`.

    Parameters
    ----------
    input : array_like, torch.Tensor or dask.array.Array
        Logits of shape (C,), (N, C) or (N, C, d1, ..., dk): classes on axis 1 (axis 0 when
        unbatched). float32/float64 computed in their precision, float16 with float32
        accumulation; integers become float64. A Dask array ((C,) or (N, C), chunked
        anyhow) gives a lazy result (no `return_stats`).
    target : array_like, torch.Tensor or dask.array.Array
        Class indices of shape (), (N,) or (N, d1, ..., dk), any integer dtype; or class
        probabilities (soft labels) of the input's shape, any float dtype.
    weight : array_like, optional
        One weight per class, shape (C,).
    ignore_index : int, optional
        Class-index targets equal to it contribute neither loss nor gradient, and do not
        count in the mean. It need not be a valid class.
    reduction : {"mean", "sum", "none"}, optional
        "mean" divides by the summed weights of the non-ignored targets (class indices) or by
        the number of elements N·d1···dk (probabilities), as torch.
    label_smoothing : float, optional
        ε in [0, 1]: the target becomes (1 − ε)·target + ε/C.
    softcap : float, optional
        c > 0: the logits become c·tanh(z/c) before the loss (Gemma 2's soft-capping).
    lse_square_scale : float, optional
        s ≥ 0: each counted element adds s·lse² to its loss (PaLM's z-loss; flash-attn's and
        Liger's name), reduced with the rest.
    return_stats : bool, optional
        Return a `CrossEntropyStats` (loss, z_loss, lse, accuracy) from the same pass.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs (see `mlecore.torch`).

    Returns
    -------
    scalar or ndarray or CrossEntropyStats
        The loss in the input's dtype; per-element losses of the target's shape with
        reduction="none".

    Raises
    ------
    IndexError
        A class index outside [0, C) that is not `ignore_index`, naming its position.
    ValueError, TypeError
        Shapes that disagree, a bad option, or an unsupported dtype.

    Notes
    -----
    Where mlecore deliberately differs from torch: a negative `label_smoothing` raises
    (torch treats it as 0); targets of every integer dtype are accepted and range-checked
    (torch wants int64); a probability of 0 on a logit of -inf adds 0, not NaN.

    Examples
    --------
    >>> import numpy as np, mlecore
    >>> s = np.array([[.3333] * 3] * 3 + [[.4333, .2333, .3333], [.3333, .2333, .4333],
    ...               [.1333, .3333, .5333]], dtype=np.float32)
    >>> y = np.array([0, 1, 1, 0, 1, 2])
    >>> print(f"{mlecore.cross_entropy(s, y):.4f}")
    1.0686
    >>> stats = mlecore.cross_entropy(s, y, return_stats=True)  # ties count as right
    >>> print(f"{stats.loss:.4f} {stats.accuracy:.4f}")
    1.0686 0.8333
    """
    if (weight is None and softcap is None and not return_stats and backend != "torch"
            and plain_rows(input) and type(target) is np.ndarray and target.ndim == 1
            and target.dtype.kind in "iu" and target.flags.c_contiguous
            and target.flags.aligned and target.dtype.isnative
            and target.shape[0] == input.shape[0]):
        return _plain_cross_entropy(input, target, ignore_index, reduction, label_smoothing,
                                    lse_square_scale, backend)
    if _spec.is_dask(input):
        from . import _dask

        _spec.numpy_backend(backend)
        if return_stats:
            raise NotImplementedError("return_stats is not supported on Dask arrays")
        return _dask.cross_entropy(input, target, weight, ignore_index, reduction,
                                   label_smoothing, softcap, lse_square_scale)
    if _spec.is_tensor(input):
        from .torch import cross_entropy as torch_cross_entropy

        return torch_cross_entropy(input, target, weight, ignore_index, reduction,
                                   label_smoothing, softcap=softcap,
                                   lse_square_scale=lse_square_scale,
                                   return_stats=return_stats, backend=backend)
    _spec.numpy_backend(backend)
    p = Problem(input, target, weight, ignore_index, reduction, label_smoothing, softcap,
                lse_square_scale)
    loss, lse, hits = p.buffers(return_stats)
    total, denom = p.rows.forward(loss, lse, hits)
    return p.finish(loss, lse, hits, total, denom, return_stats)


def _plain_cross_entropy(x, t, ignore_index, reduction, label_smoothing, lse_square_scale,
                         backend):
    """cross_entropy of (N, C) rows and (N,) class indices as they are (`plain_rows`):
    `Problem`'s steps without the layout work, the same numbers."""
    _spec.check_backend(backend)
    reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
    z = _spec.check_loss_options(None, lse_square_scale)[1]
    loss = np.empty(x.shape[0]) if reduction == "none" else None
    try:
        total, denom = _ext.cross_entropy_rows((x, x.shape, t, None, ignore, eps, z), loss)
    except IndexError as e:
        raise reworded(e, t.shape, x.shape[1], ignore) from None
    if loss is not None:
        return loss.astype(x.dtype)
    return x.dtype.type(total if reduction == "sum" else _spec.true_divide(total, denom))


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    ai, bi = a.__array_interface__, b.__array_interface__
    return (ai["data"][0] == bi["data"][0] and a.shape == b.shape and a.strides == b.strides
            and a.dtype == b.dtype)


def check_out(out, input, shape, dtype, reads) -> bool:
    """Validates a gradient buffer `out` against the input and the arrays a kernel reads
    while it writes `out` (by memory range); True when `out` is the input itself."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out must have the input's shape {tuple(shape)} and dtype "
                         f"{dtype}, got {out.shape} and {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    inplace = isinstance(input, np.ndarray) and _same_memory(out, input)
    if not inplace and isinstance(input, np.ndarray) and np.may_share_memory(out, input):
        raise ValueError("out overlaps input without being input itself; pass out=input for "
                         "an in-place gradient, or a separate array")
    for name, read in reads:
        # The kernel reads these (or copies of them) while it writes out: memory shared with
        # the caller's arrays is refused, whether or not a copy would have been read.
        if isinstance(read, np.ndarray) and np.may_share_memory(out, read):
            raise ValueError(f"out overlaps {name}: the gradient would overwrite it while "
                             "the kernel reads it; pass a separate array")
    return inplace


def cross_entropy_with_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, out=None, *, softcap=None,
                            lse_square_scale=0.0, return_stats=False, backend="auto"):
    """Cross-entropy and its gradient with respect to the logits, from one fused pass.

    Each row's log-sum-exp is computed, then its gradient, scale·(A·softmax(z) − v), is
    written once while the row is still in cache: the logits are read once and the gradient
    written once.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing
        As in `cross_entropy`.
    out : ndarray, optional
        Where the gradient goes: an array of the input's shape and dtype, or `input` itself
        for an in-place gradient (large vocabularies). Any other overlap with `input` is an
        error. Without it a new array is returned.
    softcap, lse_square_scale, return_stats
        As in `cross_entropy`; the gradient goes through the soft-cap (times 1 − (s/c)²)
        and includes the z-loss's 2·s·lse·softmax.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs.

    Returns
    -------
    loss : scalar or ndarray or CrossEntropyStats
        As `cross_entropy` returns it.
    grad : ndarray
        d loss / d input, of the input's shape and dtype (`out` when given). With
        reduction="none" it is the gradient of ``loss.sum()``. Ignored rows get 0, also
        where their logits are all -inf.

    Examples
    --------
    >>> import numpy as np, mlecore
    >>> z = np.array([[2.0, 0.0, -1.0]])
    >>> loss, grad = mlecore.cross_entropy_with_grad(z, np.array([0]))
    >>> np.allclose(grad, mlecore.softmax(z, axis=1) - [1, 0, 0])
    True
    """
    if _spec.is_dask(input):
        raise TypeError("cross_entropy_with_grad takes numpy arrays and tensors; for a Dask "
                        "array use cross_entropy (lazy), or compute its blocks with numpy")
    if _spec.is_tensor(input):
        from .torch import cross_entropy_with_grad as torch_cross_entropy_with_grad

        return torch_cross_entropy_with_grad(input, target, weight, ignore_index, reduction,
                                             label_smoothing, out, softcap=softcap,
                                             lse_square_scale=lse_square_scale,
                                             return_stats=return_stats, backend=backend)
    _spec.numpy_backend(backend)
    p = Problem(input, target, weight, ignore_index, reduction, label_smoothing, softcap,
                lse_square_scale)
    loss, lse, hits = p.buffers(return_stats)
    rows = p.rows

    def fused(grad):  # grad=None: the gradient overwrites rows.x
        return rows.fused(p.reduction, grad, loss, lse, hits)

    def done(total, denom):
        return p.finish(loss, lse, hits, total, denom, return_stats)

    if out is None:
        grad = np.empty_like(rows.x)
        total, denom = fused(grad)
        p.chain(grad)
        return done(total, denom), p.layout.restore(grad.astype(p.dtype, copy=False))

    inplace = check_out(out, input, p.input_shape, p.dtype,
                        (("target", target), ("weight", weight)))
    direct = out.ndim <= 2 and out.flags.c_contiguous and out.flags.aligned
    if p.softcap is None and inplace and np.may_share_memory(rows.x, out):
        # rows.x is the caller's array: the kernel overwrites it row by row.
        total, denom = fused(None)
    elif direct and (not inplace or p.softcap is not None) and rows.x.dtype == p.dtype:
        g = out.reshape(rows.x.shape)
        total, denom = fused(g)
        p.chain(g)
    else:
        # A layout or dtype the kernel cannot write directly (K-dim, strided, a soft-capped
        # float16 input): one extra copy.
        g = np.empty(rows.x.shape, rows.x.dtype)
        total, denom = fused(g)
        p.chain(g)
        np.copyto(out, p.layout.restore(g), casting="same_kind")
    return done(total, denom), out


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", *,
             backend="auto"):
    """Negative log-likelihood of log-probabilities, as `torch.nn.functional.nll_loss`.

    Parameters
    ----------
    input : array_like, torch.Tensor or dask.array.Array
        Log-probabilities of shape (C,), (N, C) or (N, C, d1, ..., dk) ((C,) or (N, C) for
        a Dask array, which gives a lazy result).
    target : array_like, torch.Tensor or dask.array.Array
        Class indices of shape (), (N,) or (N, d1, ..., dk), any integer dtype.
    weight, ignore_index, reduction
        As in `cross_entropy`.
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs.

    Returns
    -------
    scalar or ndarray
        -w[y]·input[y] reduced; "mean" divides by the summed weights of non-ignored targets.

    Examples
    --------
    >>> import numpy as np, mlecore
    >>> logp = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> print(f"{mlecore.nll_loss(logp, np.array([0])):.6f}")
    0.693147
    """
    if _spec.is_dask(input):
        from . import _dask

        _spec.numpy_backend(backend)
        return _dask.nll_loss(input, target, weight, ignore_index, reduction)
    if _spec.is_tensor(input):
        from .torch import nll_loss as torch_nll_loss

        return torch_nll_loss(input, target, weight, ignore_index, reduction, backend=backend)
    _spec.numpy_backend(backend)
    reduction, _, ignore = _spec.check_options(reduction, 0.0, ignore_index)
    x = as_float_array(input)
    t = np.asarray(target)
    _spec.index_only(_spec.target_is_index(t.dtype.kind, t.dtype), t.dtype)
    n_classes, loss_shape = _spec.class_layout(x.shape, t.shape, True)
    w = None if weight is None else class_weights(weight, n_classes, np.float64)
    denom = check_labels(t, n_classes, ignore, w)
    valid = label_mask(t, ignore)
    safe = np.where(valid, t, 0).astype(np.intp)
    axis = _spec.class_axis(x.ndim)
    if n_classes:
        picked = np.take_along_axis(x, np.expand_dims(safe, axis), axis=axis).squeeze(axis)
    else:  # no classes: every label is ignored (checked)
        picked = np.zeros(loss_shape)
    wy = np.where(valid, 1.0 if w is None else w[safe], 0.0)
    with np.errstate(invalid="ignore"):
        loss = np.where(valid, -wy * picked.astype(np.float64), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = _spec.reduce_loss(loss, loss.sum(), np.float64(denom), reduction, loss_shape)
    return r.astype(x.dtype) if reduction == "none" else x.dtype.type(r)
