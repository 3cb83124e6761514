"""The compiled cross-entropy kernels as both front-ends call them: numpy arrays in row
form in, a bad label reported in the caller's terms out.

The numpy API passes its arrays; `mlecore.torch`'s CPU kernels pass numpy views of tensors.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import _mlecore as _ext
from ._arrays import as_rows, native
from ._spec import label_error


def reworded(e: IndexError, target_shape, n_classes: int, ignore_index: int) -> IndexError:
    """The kernels' out-of-range report (message, flat position, value) reworded with the
    position in the caller's target shape; any other IndexError as it is."""
    if len(e.args) != 3:
        return e
    _, position, value = e.args
    return label_error(position, value, target_shape, n_classes, ignore_index)


@contextmanager
def labels_reported(target_shape, n_classes: int, ignore_index: int):
    """`reworded` around a block of kernel calls."""
    try:
        yield
    except IndexError as e:
        raise reworded(e, target_shape, n_classes, ignore_index) from None


@dataclass
class CeRows:
    """A cross-entropy problem in the kernels' row form. The Rust layer reads the first six
    attributes; the last two word a bad label's error."""

    x: np.ndarray  # (rows, C), C-contiguous: float16/32/64, or bfloat16 bits as uint16
    target: np.ndarray  # (rows,) integers, or (rows, C) probabilities of x's dtype
    weight: np.ndarray | None  # (C,) of the compute dtype
    ignore_index: int
    label_smoothing: float
    lse_square_scale: float
    target_shape: tuple[int, ...]
    n_classes: int

    def _reported(self):
        return labels_reported(self.target_shape, self.n_classes, self.ignore_index)

    def call(self) -> tuple:
        """The problem as the kernels take it (`rust/python/calls.rs`, `Problem`)."""
        return (self.x, self.x.shape, self.target, self.weight, self.ignore_index,
                self.label_smoothing, self.lse_square_scale)

    def forward(self, loss: np.ndarray, lse: np.ndarray,
                hits: np.ndarray | None = None) -> tuple[float, float]:
        """Per-row losses (float64), log-sum-exps and (given `hits`) whether each row's class
        holds its maximum; returns (Σ loss, mean denominator)."""
        with self._reported():
            return _ext.cross_entropy_rows(self.call(), loss, lse, hits)

    def fused(self, scale, grad: np.ndarray | None, loss: np.ndarray, lse: np.ndarray,
              hits: np.ndarray | None = None) -> tuple[float, float]:
        """`forward`, and the gradient into `grad` (None: over `x`), scaled as the reduction
        `scale` ("mean", "sum", "none") or by the number `scale`."""
        with self._reported():
            return _ext.cross_entropy_grad_rows(self.call(), scale, grad, loss, lse, hits)

    def backward(self, lse: np.ndarray, scale_rows: np.ndarray, grad: np.ndarray) -> None:
        """The gradient from saved log-sum-exps, row r scaled by `scale_rows[r]`."""
        with self._reported():
            _ext.cross_entropy_backward_rows(self.call(), lse, 1.0, scale_rows, grad)


def check_labels(target: np.ndarray, n_classes: int, ignore_index: int,
                 weight: np.ndarray | None = None) -> float:
    """Checks class indices (any integer dtype, any shape) in Rust; returns the `mean`
    denominator (the summed float64 `weight` of the non-ignored labels, or their count)."""
    flat = native(np.ascontiguousarray(target.reshape(-1)))
    with labels_reported(target.shape, n_classes, ignore_index):
        return _ext.check_labels(flat, n_classes, ignore_index, weight)


def logsumexp_over(arr: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """log Σ exp of a float array over `axes` (the reduced array, axes removed): a leading
    or middle block of axes in place by the column kernel, anything else as rows."""
    res = _logsumexp_block(arr, axes)
    if res is None:
        rows = as_rows(arr, axes)
        out = np.empty(rows.matrix.shape[0], arr.dtype)
        _ext.logsumexp_rows(rows.matrix, rows.matrix.shape[1], out)
        res = rows.restore_reduced(out)
    return res


def _logsumexp_block(arr, axes):
    """The reduction of a leading or middle block of axes, read in place by the column kernel,
    or None when another path serves better (trailing axes, copies, float16, empty input)."""
    if arr.dtype not in (np.float32, np.float64) or arr.size == 0 or not axes:
        return None
    nd = arr.ndim
    # A C-contiguous array, or the (C-contiguous) transpose of a Fortran one.
    for view, ax in ((arr, axes), (arr.T, tuple(sorted(nd - 1 - a for a in axes)))):
        if not view.flags.c_contiguous or ax != tuple(range(ax[0], ax[-1] + 1)):
            continue
        if ax[-1] == nd - 1:
            return None  # trailing axes: contiguous rows
        shape = view.shape
        outer, inner = math.prod(shape[: ax[0]]), math.prod(shape[ax[-1] + 1:])
        steps = math.prod(shape[ax[0]: ax[-1] + 1])
        out = np.empty((outer, inner), arr.dtype)
        _ext.logsumexp_axis(view, (outer, steps, inner), out)
        out = out.reshape(shape[: ax[0]] + shape[ax[-1] + 1:])
        return out if view is arr else out.T
    return None
