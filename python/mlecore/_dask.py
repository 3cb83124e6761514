"""Dask arrays through mlecore's numpy functions: lazy results, the same signatures.

A reduction over a chunked axis is a tree (`dask.array.reduction`): each block's partial
log-sum-exp comes from the Rust kernel (in float64), and partials merge by the same kernel,
log(e^a + e^b), in the order dask's tree fixes. The loss's other terms are sums of
elementwise products along the class axis. Axes that are not reduced map block by block.

Imported only when a Dask array arrives: `import mlecore` imports no dask.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

from . import _spec
from ._arrays import as_float_array, axes_of, class_weights
from ._kernels import check_labels, logsumexp_over


def _float(a: da.Array) -> tuple[da.Array, np.dtype]:
    """(a in its compute dtype, the result dtype): numpy's and mlecore's dtype rules."""
    result = as_float_array(np.empty(0, a.dtype)).dtype  # ints → float64, errors as numpy's
    compute = np.float32 if result == np.float16 else result
    return a.astype(compute), result


def _lse(block: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    """The Rust kernel's log-sum-exp of a block over `axis` (a tuple, as dask passes it)."""
    axes = tuple(sorted(a % block.ndim for a in axis))
    # Blocks may be strided views of their source: the kernels take them contiguous.
    res = logsumexp_over(np.ascontiguousarray(as_float_array(block)), axes)
    return np.expand_dims(res, axes) if keepdims else res


def _partial(block, axis, keepdims):
    """A block's log-sum-exp over `axis`, in float64, kept as a dimension of one."""
    return _lse(block, axis, True).astype(np.float64)


def _merge(partials, axis, keepdims):
    return _lse(partials, axis, keepdims)


def _lse64(x: da.Array, axes, keepdims: bool) -> da.Array:
    return da.reduction(x, _partial, _merge, combine=_merge, axis=axes, keepdims=keepdims,
                        dtype=np.float64, concatenate=True)


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """`mlecore.logsumexp` of a Dask array: a lazy Dask array."""
    if b is not None or return_sign:
        raise NotImplementedError("b= and return_sign= are not supported on Dask arrays; "
                                  "compute them with numpy arrays")
    x, dtype = _float(a)
    if x.ndim == 0:  # as on the numpy path: one value is a (1,) array
        x = x.reshape(1)
    return _lse64(x, axes_of(axis, x.ndim), keepdims).astype(dtype)


def _normalized(a, axis, log: bool):
    x, dtype = _float(a)
    axes = axes_of(axis, x.ndim)
    if x.ndim == 0:  # as on the numpy path: the one value is its own slice, shape ()
        return _normalized(a.reshape(1), None, log).reshape(())
    lse = _lse64(x, axes, True).astype(x.dtype)
    # A slice whose log-sum-exp is not finite (it holds +inf or NaN, or is all −inf) is all
    # NaN, as on the numpy path.
    shifted = da.where(da.isfinite(lse), x - lse, np.nan)
    out = shifted if log else da.exp(shifted)
    return out.astype(dtype)


def softmax(x, axis=None):
    """`mlecore.softmax` of a Dask array: a lazy Dask array."""
    return _normalized(x, axis, log=False)


def log_softmax(x, axis=None):
    """`mlecore.log_softmax` of a Dask array: a lazy Dask array."""
    return _normalized(x, axis, log=True)


def _checked(y, classes: int, ignore: int, shape):
    """Class indices, their range checked: at once for a numpy array (the numpy path's
    IndexError), lazily, block by block with global positions, for a Dask array."""
    if not isinstance(y, da.Array):
        y = np.asarray(y)
        check_labels(y, classes, ignore)
        return da.from_array(y, chunks=-1) if y.ndim else da.from_array(y)

    def check(block, block_info=None):
        start = block_info[0]["array-location"][0][0] if block.ndim else 0
        flat = np.ascontiguousarray(block.reshape(-1))
        try:
            check_labels(flat, classes, ignore)
        except IndexError:
            wide = flat.astype(object)  # exact for every integer dtype, uint64 included
            bad = int(np.flatnonzero((wide != ignore) & ((wide < 0) | (wide >= classes)))[0])
            if start is None or _unknown(start):  # chunk sizes unknown: name the block
                block_number = block_info[0]["chunk-location"][0]
                raise IndexError(f"Target {flat[bad]} is out of bounds: element {bad} of the "
                                 f"target's block {block_number} (of unknown offset: chunk "
                                 f"sizes unknown) = {flat[bad]}, expected a class index in "
                                 f"[0, {classes}) or ignore_index ({ignore})") from None
            raise _spec.label_error(start + bad, int(flat[bad]), shape, classes,
                                    ignore) from None
        return block

    return y.map_blocks(check, dtype=y.dtype)


def _unknown(n) -> bool:
    """A length dask does not know (NaN: after boolean indexing, say)."""
    return isinstance(n, float) and math.isnan(n)


def _layout(x: da.Array, t, is_index: bool) -> tuple[int, tuple]:
    """`_spec.class_layout` for Dask shapes, whose row counts may be unknown: then the class
    count must be known, and the input's and the target's rows unknown alike, chunk for
    chunk (as indexing both by one mask leaves them); their blocks' lengths are compared
    when computed (`_aligned`). An unknown row count stays NaN in the loss's shape."""
    xs, ts = tuple(x.shape), tuple(t.shape)
    if not any(_unknown(n) for n in xs + ts):
        return _spec.class_layout(xs, ts, is_index)
    if len(xs) == 1 or (len(xs) > 1 and _unknown(xs[1])):
        raise ValueError(f"the class axis of a Dask input must have a known length, got shape "
                         f"{xs}: call input.compute_chunk_sizes() first")
    rows_x = x.chunks[0]
    rows_t = t.chunks[0] if isinstance(t, da.Array) and t.ndim else ()
    if len(rows_x) != len(rows_t) or any(
            _unknown(a) != _unknown(b) or not _unknown(a) and a != b
            for a, b in zip(rows_x, rows_t, strict=False)):
        raise ValueError(f"where row counts are unknown, the input's rows (chunks "
                         f"{rows_x}) and the target's ({rows_t or ts}) must be chunked alike, "
                         "as indexing both by one mask leaves them; or call "
                         "compute_chunk_sizes() on both first")
    known = [-1 if _unknown(n) else n for n in xs], [-1 if _unknown(n) else n for n in ts]
    classes, loss_shape = _spec.class_layout(*known, is_index)
    return classes, tuple(math.nan if n == -1 else n for n in loss_shape)


def _aligned(x: da.Array, t: da.Array) -> da.Array:
    """`t`, checked block by block to hold as many rows as `x`'s block (whose lengths dask
    does not know before computing them)."""
    def check(tb, xb, block_info=None):
        if tb.shape[0] != xb.shape[0]:
            block = block_info[0]["chunk-location"][0]
            raise ValueError(f"the target's block {block} holds {tb.shape[0]} rows where the "
                             f"input's holds {xb.shape[0]}: index both by the same mask")
        return tb

    firsts = x[:, 0]
    if t.ndim == 1:
        return da.map_blocks(check, t, firsts, dtype=t.dtype)
    return da.map_blocks(check, t, firsts[:, None], dtype=t.dtype)


def _rows(x: da.Array, target, is_index: bool):
    """(N, C) logits and (N,) targets (or (N, C) probabilities): an unbatched (C,) input is
    one row."""
    if x.ndim == 1:
        return x[None, :], (target[None] if is_index else target[None, :])
    if x.ndim != 2:
        raise NotImplementedError("Dask arrays take (C,) or (N, C) logits; move the class "
                                  "axis last and flatten the others first")
    return x, target


def _picked(x: da.Array, t: da.Array, w: np.ndarray, ignore: int):
    """Per row: whether it counts, its target's logit x_y (a sum over the class chunks of
    the one-hot product, in float64) and its class weight w_y (0 where ignored)."""
    y = t.astype(np.int64).rechunk((x.chunks[0],))
    valid = y != ignore
    safe = da.where(valid, y, 0)
    hot = da.arange(x.shape[1], chunks=x.chunks[1]) == safe[:, None]
    xy = da.where(hot, x, 0).sum(axis=1, dtype=np.float64)
    wy = safe.map_blocks(lambda b: w[b] if w.size else np.zeros(b.shape), dtype=np.float64)
    return valid, xy, da.where(valid, wy, 0.0)


def _weights(weight, classes, dtype):
    return np.ones(classes, dtype) if weight is None else class_weights(weight, classes, dtype)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, softcap=None, lse_square_scale=0.0):
    """`mlecore.cross_entropy` of a Dask array: a lazy Dask array (a 0-d one when reduced)."""
    reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
    cap, z = _spec.check_loss_options(softcap, lse_square_scale)
    x, dtype = _float(input)
    t = target if isinstance(target, da.Array) else np.asarray(target)
    is_index = _spec.target_is_index(t.dtype.kind, t.dtype)
    classes, loss_shape = _layout(x, t, is_index)
    if is_index:
        t = _checked(t, classes, ignore, tuple(t.shape))
    x, t = _rows(x, t, is_index)
    if _unknown(x.shape[0]):
        t = _aligned(x, t)
    if cap is not None:
        x = cap * da.tanh(x / cap)
    w = _weights(weight, classes, np.float64)
    lse = _lse64(x, (1,), False)
    f64 = np.float64
    if is_index:
        valid, xy, wy = _picked(x, t, w, ignore)
        a = (1 - eps) * wy + (eps / classes if classes else 0.0) * w.sum()
        loss = (1 - eps) * wy * (lse - xy)
        denom = wy.sum()
    else:
        p = da.asarray(t).astype(f64).rechunk(x.chunks)
        v = w * (p * (1 - eps) + (eps / classes if classes else 0.0))
        a = v.sum(axis=1)
        # 0·(lse − x) is 0 even where x = −inf: a zero probability adds nothing.
        loss = a * lse - da.where(v == 0, 0.0, v * x).sum(axis=1, dtype=f64)
        valid = da.ones_like(x[:, 0], dtype=bool)
        denom = float(x.shape[0]) if not _unknown(x.shape[0]) else valid.sum()
    if is_index and eps:
        wx = da.where(w == 0, 0.0, x * w).sum(axis=1, dtype=f64)
        loss = loss + (eps / classes) * (w.sum() * lse - wx)
    loss = da.where(a == 0, 0.0, loss)
    if z:
        loss = loss + z * lse * lse
    poisoned = da.isnan(lse) | (lse == np.inf)
    loss = da.where(poisoned, np.nan, loss)
    loss = da.where(valid, loss, 0.0)
    if reduction == "none":
        return _shaped(loss, loss_shape).astype(dtype)
    total = loss.sum()
    return (total if reduction == "sum" else total / denom).astype(dtype)


def _shaped(loss: da.Array, loss_shape: tuple) -> da.Array:
    """Per-row losses in the loss's shape; rows of unknown count stay as they are."""
    return loss if any(_unknown(n) for n in loss_shape) else loss.reshape(loss_shape)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """`mlecore.nll_loss` of a Dask array of log-probabilities: a lazy Dask array."""
    reduction, _, ignore = _spec.check_options(reduction, 0.0, ignore_index)
    x, dtype = _float(input)
    t = target if isinstance(target, da.Array) else np.asarray(target)
    _spec.index_only(_spec.target_is_index(t.dtype.kind, t.dtype), t.dtype)
    classes, loss_shape = _layout(x, t, True)
    t = _checked(t, classes, ignore, tuple(t.shape))
    x, t = _rows(x, t, True)
    if _unknown(x.shape[0]):
        t = _aligned(x, t)
    w = _weights(weight, classes, np.float64)
    valid, xy, wy = _picked(x, t, w, ignore)
    loss = da.where(valid, -wy * xy, 0.0)
    if reduction == "none":
        return _shaped(loss, loss_shape).astype(dtype)
    total = loss.sum()
    return (total if reduction == "sum" else total / wy.sum()).astype(dtype)
