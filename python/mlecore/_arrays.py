"""Turning numpy inputs into what the kernels take: float arrays viewed as C-contiguous rows.

The kernels reduce over the last axis of a C-contiguous 2-D array. Any other layout or axis
is brought there here, without a copy where a view suffices (C order with trailing axes,
Fortran order with leading axes), otherwise with one copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _spec

try:  # numpy >= 2
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.numeric import normalize_axis_tuple


_WIDE = (np.dtype(np.float32), np.dtype(np.float64))


def plain_rows(a) -> bool:
    """True for a C-contiguous, aligned, native 2-D float32/float64 ndarray: rows the kernels
    read as they are, so a call can skip the general layout steps (`as_rows`)."""
    return (type(a) is np.ndarray and a.ndim == 2 and a.dtype in _WIDE
            and a.flags.c_contiguous and a.flags.aligned)


def native(a: np.ndarray) -> np.ndarray:
    """`a` in native byte order and aligned (as the kernels read memory), copying only when
    it is not: arrays from network buffers, pickle-5 and memory-mapped files can start at an
    odd address."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.aligned:
        a = a.copy()
    return a


def label_mask(t: np.ndarray, ignore_index: int) -> np.ndarray:
    """Where class indices `t` are not `ignore_index`, compared exactly: an ignore_index that
    `t`'s dtype cannot hold matches nothing (no wrap-around)."""
    info = np.iinfo(t.dtype)
    if info.min <= ignore_index <= info.max:
        return t != t.dtype.type(ignore_index)
    return np.ones(t.shape, bool)


def as_float_array(a, name: str = "input") -> np.ndarray:
    """`a` as a native-endian float16/32/64 array; integers and bools become float64.

    Raises TypeError for complex, object, string and extended-precision input.
    """
    arr = np.asarray(a)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype.itemsize > 8:
            raise TypeError(
                f"{name} has dtype {arr.dtype}; mlecore computes in float16, float32 or "
                "float64: convert it first"
            )
    elif kind in "iub":
        arr = arr.astype(np.float64)
    elif kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); mlecore takes real input only")
    else:
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return native(arr)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels accumulate in for storage `dtype` (float32 for float16)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def axes_of(axis, ndim: int) -> tuple[int, ...]:
    """`axis` (None, int or tuple) as sorted non-negative axes; numpy's errors otherwise."""
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(normalize_axis_tuple(axis, ndim)))


@dataclass
class Rows:
    """An array seen as `rows` × `cols`, reducing over `axes`.

    `matrix` is C-contiguous; `tshape` and `perm` say how to put a same-shaped result back:
    ``result.reshape(tshape).transpose(inverse(perm))``.
    """

    matrix: np.ndarray
    kept_shape: tuple[int, ...]
    tshape: tuple[int, ...]
    perm: tuple[int, ...]

    def restore(self, m: np.ndarray) -> np.ndarray:
        """A rows × cols result (like `matrix`) back in the original axis order."""
        return m.reshape(self.tshape).transpose(np.argsort(self.perm))

    def restore_reduced(self, v: np.ndarray) -> np.ndarray:
        """One value per row back in the shape of the kept axes, in their original order."""
        nk = len(self.kept_shape)
        return v.reshape(self.tshape[:nk]).transpose(np.argsort(self.perm[:nk]))


def as_rows(arr: np.ndarray, axes: tuple[int, ...]) -> Rows:
    """`arr` as C-contiguous rows over `axes`, copying only when no view will do."""
    nd = arr.ndim
    kept = tuple(i for i in range(nd) if i not in axes)
    kept_shape = tuple(arr.shape[i] for i in kept)
    rows = math.prod(kept_shape)
    cols = math.prod(arr.shape[i] for i in axes)
    if arr.flags.c_contiguous and axes == tuple(range(nd - len(axes), nd)):
        perm = tuple(range(nd))
        src = arr
    elif arr.flags.f_contiguous and axes == tuple(range(len(axes))):
        # Fortran order: the transpose is C-contiguous with the reduced axes last.
        perm = tuple(reversed(range(nd)))
        src = arr.T
    else:
        perm = kept + axes
        src = np.ascontiguousarray(arr.transpose(perm))
    tshape = tuple(arr.shape[i] for i in perm)
    matrix = src.reshape(rows, cols)
    if not matrix.flags.c_contiguous:  # a size-0 or size-1 reshape can still need this
        matrix = np.ascontiguousarray(matrix)
    return Rows(matrix, kept_shape, tshape, perm)


def class_weights(weight, n_classes: int, dtype) -> np.ndarray:
    """`weight` as a contiguous (C,) array of `dtype`; ValueError for another shape."""
    w = as_float_array(weight, "weight")
    if w.shape != (n_classes,):
        raise _spec.weight_shape_error(n_classes, w.shape)
    return np.ascontiguousarray(w, dtype=dtype)


def softcap_into(z: np.ndarray, cap: float, out: np.ndarray) -> np.ndarray:
    """c·tanh(z/c) into `out` (which may be `z`): Gemma 2's soft-capping of logits."""
    np.divide(z, cap, out=out)
    np.tanh(out, out=out)
    out *= cap
    return out


def prob_hits(logits: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per row: whether the most probable target class holds the row's maximum logit (the
    accuracy of probability targets, judged before a pass can overwrite the logits)."""
    n = logits.shape[0]
    return logits[np.arange(n), np.argmax(probs, axis=1)] == logits.max(axis=1,
                                                                       initial=-np.inf)


def loss_stats(reduced, lse: np.ndarray, right: np.ndarray, counted: np.ndarray, z: float,
               reduce, loss_shape, dtype) -> _spec.CrossEntropyStats:
    """The `CrossEntropyStats` of a pass: the z-loss z·lse² of the counted rows reduced by
    `reduce(rows, total)` as the loss was, the log-sum-exps in the loss's shape and dtype,
    and the fraction of counted rows that are `right`."""
    lse64 = lse.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z_rows = np.where(counted, z * lse64 * lse64, 0.0) if z else np.zeros(len(lse))
    n = int(counted.sum())
    accuracy = float(right[counted].sum()) / n if n else math.nan
    return _spec.CrossEntropyStats(reduced, reduce(z_rows, float(z_rows.sum())),
                                   lse.reshape(loss_shape).astype(dtype), accuracy)
