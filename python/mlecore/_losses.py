"""torch.nn.functional's cross_entropy and nll_loss for numpy arrays, on the Rust kernels.

The validation and the row layout here serve the torch bridge too (`mlecore.torch`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from . import _mlecore as _ext
from ._arrays import as_float_array, compute_dtype
from ._backend import route

REDUCTIONS = ("none", "mean", "sum")
_I64 = np.iinfo(np.int64)


def check_options(reduction, label_smoothing=0.0, ignore_index=-100) -> tuple[str, float, int]:
    """Validated (reduction, label_smoothing, ignore_index), torch's names and rules."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float, got {label_smoothing!r}") from None
    if not 0.0 <= eps <= 1.0:
        # torch silently treats a negative value as 0; mlecore refuses it.
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    try:
        ignore = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}") from None
    if not _I64.min <= ignore <= _I64.max:
        raise ValueError(f"ignore_index must fit in int64, got {ignore}")
    return reduction, eps, ignore


def class_layout(input_shape, target_shape, is_index: bool) -> tuple[int, tuple[int, ...]]:
    """The class count and the shape of per-element losses; ValueError on a mismatch.

    Classes are axis 1 of (N, C, d1, ..., dk) input, axis 0 of unbatched (C,) input.
    """
    input_shape, target_shape = tuple(input_shape), tuple(target_shape)
    if len(input_shape) == 0:
        raise ValueError("input must have a class axis: expected shape (C,), (N, C) or "
                         "(N, C, d1, ..., dk), got a 0-d input")
    n_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    loss_shape = () if len(input_shape) == 1 else (input_shape[0],) + input_shape[2:]
    if is_index and target_shape != loss_shape:
        raise ValueError(f"target of class indices must have shape {loss_shape} for input of "
                         f"shape {input_shape}, got {target_shape}")
    if not is_index and target_shape != input_shape:
        raise ValueError(f"a float target holds class probabilities and must have the input's "
                         f"shape {input_shape}, got {target_shape}")
    return n_classes, loss_shape


def to_rows(a: np.ndarray) -> np.ndarray:
    """(N, C, d1, ..., dk) → C-contiguous (N·d1···dk, C); (C,) → (1, C)."""
    if a.ndim <= 2:
        return np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).reshape(-1, a.shape[1])


def from_rows(m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `to_rows` for an array of the input's shape."""
    if len(shape) <= 2:
        return m.reshape(shape)
    return np.moveaxis(m.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1)


def target_error(err: IndexError, target_shape, n_classes: int, ignore_index: int):
    """The kernel's out-of-range report, with the position in the caller's target shape."""
    _, position, value = err.args
    if tuple(target_shape) == ():
        where = "target"
    else:
        idx = np.unravel_index(position, tuple(target_shape))
        where = f"target[{', '.join(str(int(i)) for i in idx)}]"
    return IndexError(f"Target {value} is out of bounds: {where} = {value}, expected a class "
                      f"index in [0, {n_classes}) or ignore_index ({ignore_index})")


def target_kind(dtype: np.dtype, name: str = "target") -> bool:
    """True for class indices, False for probabilities; TypeError for anything else."""
    if dtype.kind in "iu":
        return True
    if dtype.kind == "f":
        return False
    raise TypeError(f"{name} must hold class indices (an integer dtype) or class "
                    f"probabilities (a float dtype), got dtype {dtype}")


def class_weights(weight, n_classes: int, dtype) -> np.ndarray:
    """`weight` as a contiguous (C,) array of `dtype`; ValueError for another shape."""
    w = as_float_array(weight, "weight")
    if w.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), one per class, got {w.shape}")
    return np.ascontiguousarray(w, dtype=dtype)


@dataclass
class Problem:
    """A validated cross-entropy call in the kernels' row form."""

    x: np.ndarray  # (rows, C), C-contiguous, float16/32/64
    target: np.ndarray  # (rows,) integers or (rows, C) probabilities of x's dtype
    weight: np.ndarray | None
    ignore_index: int
    label_smoothing: float
    reduction: str
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    loss_shape: tuple[int, ...]
    n_classes: int

    def call(self, fn, *args):
        """Runs a row kernel, reporting a bad label in the caller's terms."""
        try:
            return fn(self.x, self.target, self.weight, self.ignore_index, self.label_smoothing,
                      *args)
        except IndexError as e:
            if len(e.args) == 3:
                raise target_error(e, self.target_shape, self.n_classes,
                                   self.ignore_index) from None
            raise

    def reduce(self, loss: np.ndarray, total: float, denom: float):
        dtype = self.x.dtype
        if self.reduction == "none":
            return loss.reshape(self.loss_shape).astype(dtype)
        if self.reduction == "sum":
            return dtype.type(total)
        with np.errstate(invalid="ignore", divide="ignore"):
            return dtype.type(np.float64(total) / np.float64(denom))


def prepare(input, target, weight, ignore_index, reduction, label_smoothing) -> Problem:
    """Validates a numpy cross-entropy call and lays it out as rows."""
    reduction, eps, ignore = check_options(reduction, label_smoothing, ignore_index)
    x = as_float_array(input)
    t = np.asarray(target)
    is_index = target_kind(t.dtype)
    n_classes, loss_shape = class_layout(x.shape, t.shape, is_index)
    if is_index:
        t = np.ascontiguousarray(t.reshape(-1))
        if not t.dtype.isnative:
            t = t.astype(t.dtype.newbyteorder("="))
    else:
        t = to_rows(t.astype(x.dtype, copy=False))
    w = None if weight is None else class_weights(weight, n_classes, compute_dtype(x.dtype))
    return Problem(to_rows(x), t, w, ignore, eps, reduction, x.shape, np.shape(target),
                   loss_shape, n_classes)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, backend="auto"):
    """Cross-entropy between logits and a target, as `torch.nn.functional.cross_entropy`.

    Parameters
    ----------
    input : array_like or torch.Tensor
        Logits of shape (C,), (N, C) or (N, C, d1, ..., dk): classes on axis 1 (axis 0 when
        unbatched). float32/float64 computed in their precision, float16 with float32
        accumulation; integers become float64.
    target : array_like or torch.Tensor
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
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs (see `mlecore.torch`).

    Returns
    -------
    scalar or ndarray
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
    """
    routed = route(input, backend)
    if routed is not None:
        return routed.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                                    reduction=reduction, label_smoothing=label_smoothing)
    p = prepare(input, target, weight, ignore_index, reduction, label_smoothing)
    rows = p.x.shape[0]
    loss = np.empty(rows)
    lse = np.empty(rows, compute_dtype(p.x.dtype))
    total, denom = p.call(_ext.cross_entropy_rows, loss, lse)
    return p.reduce(loss, total, denom)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    ai, bi = a.__array_interface__, b.__array_interface__
    return (ai["data"][0] == bi["data"][0] and a.shape == b.shape and a.strides == b.strides
            and a.dtype == b.dtype)


def cross_entropy_with_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, out=None, *, backend="auto"):
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
    backend : {"auto", "rust", "torch"}, optional
        For torch tensors: which implementation runs.

    Returns
    -------
    loss : scalar or ndarray
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
    routed = route(input, backend)
    if routed is not None:
        return routed.cross_entropy_with_grad(
            input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, out=out)
    p = prepare(input, target, weight, ignore_index, reduction, label_smoothing)
    rows = p.x.shape[0]
    loss = np.empty(rows)
    lse = np.empty(rows, compute_dtype(p.x.dtype))

    def run(grad):  # grad=None: the gradient overwrites p.x
        return p.call(_ext.cross_entropy_grad_rows, p.reduction, grad, loss, lse)

    if out is None:
        grad = np.empty_like(p.x)
        total, denom = run(grad)
        return p.reduce(loss, total, denom), from_rows(grad, p.input_shape)

    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != p.input_shape or out.dtype != p.x.dtype:
        raise ValueError(f"out must have the input's shape {p.input_shape} and dtype "
                         f"{p.x.dtype}, got {out.shape} and {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    inplace = isinstance(input, np.ndarray) and _same_memory(out, input)
    if not inplace and isinstance(input, np.ndarray) and np.shares_memory(out, input):
        raise ValueError("out overlaps input without being input itself; pass out=input for "
                         "an in-place gradient, or a separate array")
    direct = out.ndim <= 2 and out.flags.c_contiguous
    if inplace and np.shares_memory(p.x, out):
        # p.x is the caller's array: the kernel overwrites it row by row.
        total, denom = run(None)
    elif direct and not inplace:
        g = out.reshape(p.x.shape)
        total, denom = run(g)
    else:
        # A layout the kernel cannot write directly (K-dim, strided): one extra copy.
        g = np.empty_like(p.x)
        total, denom = run(g)
        np.copyto(out, from_rows(g, p.input_shape))
    return p.reduce(loss, total, denom), out


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", *,
             backend="auto"):
    """Negative log-likelihood of log-probabilities, as `torch.nn.functional.nll_loss`.

    Parameters
    ----------
    input : array_like or torch.Tensor
        Log-probabilities of shape (C,), (N, C) or (N, C, d1, ..., dk).
    target : array_like or torch.Tensor
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
    routed = route(input, backend)
    if routed is not None:
        return routed.nll_loss(input, target, weight=weight, ignore_index=ignore_index,
                               reduction=reduction)
    reduction, _, ignore = check_options(reduction, 0.0, ignore_index)
    x = as_float_array(input)
    t = np.asarray(target)
    if not target_kind(t.dtype):
        raise TypeError(f"nll_loss takes class indices (an integer dtype), got {t.dtype}")
    n_classes, loss_shape = class_layout(x.shape, t.shape, True)
    valid = t != ignore
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        pos = int(np.flatnonzero(bad.reshape(-1))[0])
        value = t.reshape(-1)[pos].item()
        raise target_error(IndexError("", pos, value), t.shape, n_classes, ignore)
    safe = np.where(valid, t, 0).astype(np.intp)
    axis = 0 if x.ndim == 1 else 1
    picked = np.take_along_axis(x, np.expand_dims(safe, axis), axis=axis).squeeze(axis)
    if weight is None:
        w = np.ones(loss_shape)
    else:
        w = class_weights(weight, n_classes, np.float64)[safe]
    w = np.where(valid, w, 0.0)
    with np.errstate(invalid="ignore"):
        loss = np.where(valid, -w * picked.astype(np.float64), 0.0)
    if reduction == "none":
        return loss.astype(x.dtype)
    total = loss.sum()
    if reduction == "sum":
        return x.dtype.type(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x.dtype.type(total / w.sum())
