"""`linear_cross_entropy`: torch.nn.functional.linear_cross_entropy's signature and semantics,
computed in chunks of rows so that the (N, C) logits never exist."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _linear_chunks, _spec
from . import _eager, _ops
from . import _reference as R
from ._functional import (
    _EAGER,
    _check_weight,
    _finish,
    _float_input,
    _same_device,
    _target_kind,
    cross_entropy,
)
from ._linear_ops import RUST, TORCH
from ._linear_ops import eager as _linear_ops_eager
from ._ops import _transformed, ops


def _chunk(options, chunk_size, rows: int, classes: int, dtype) -> int:
    """Rows per chunk: mlecore's `chunk_size`, else a `LinearCrossEntropyOptions`'s
    `batch_chunk_size`, else mlecore's rule (`mlecore._linear_chunks.chunk_rows`)."""
    given = _spec.check_chunk_size(chunk_size)
    if options is not None:
        if not hasattr(options, "batch_chunk_size"):
            raise TypeError("options must be a torch.nn.LinearCrossEntropyOptions or None, "
                            f"got {type(options).__name__}")
        theirs = _spec.check_chunk_size(options.batch_chunk_size)
        if given is not None and theirs is not None and given != theirs:
            raise ValueError(f"chunk_size={given} and options.batch_chunk_size={theirs} "
                             "disagree; give one")
        given = given if given is not None else theirs
    itemsize = torch.empty((), dtype=R.compute_dtype(dtype)).element_size()
    return _linear_chunks.chunk_rows(rows, classes, itemsize, given)


def _check_shapes(x: Tensor, lw: Tensor, bias: Tensor | None) -> tuple[int, tuple[int, ...]]:
    """torch's checks, with torch's messages: (C, out_features)."""
    if x.dim() < 1 or x.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {x.dim()}")
    if lw.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got "
                           f"{lw.dim()}")
    if x.shape[-1] != lw.shape[-1]:
        raise RuntimeError("expected equal input and linear_weight last dimensions "
                           f"(in_features), got {x.shape[-1]} and {lw.shape[-1]}, "
                           "respectively")
    classes, out_features = lw.shape[0], tuple(lw.shape[1:-1])
    if bias is not None and tuple(bias.shape) != (classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(classes, *out_features)}, got "
                           f"{tuple(bias.shape)}")
    if out_features and x.dim() == 1:
        raise RuntimeError(f"K-dimensional loss defined by linear_weight shape "
                           f"{tuple(lw.shape)} requires batched input, (N, {x.shape[-1]}), "
                           f"got unbatched input with shape {tuple(x.shape)}")
    return classes, out_features


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Tensor | None = None, weight: Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None,
                         label_smoothing: float = 0.0, options=None,
                         softcap: float | None = None, lse_square_scale: float = 0.0,
                         chunk_size: int | None = None, return_stats: bool = False,
                         backend: str = "auto"):
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` without the logits, with
    exactly `torch.nn.functional.linear_cross_entropy`'s semantics.

    Parameters
    ----------
    input : torch.Tensor
        (N, D) or (D,); float16, bfloat16, float32 or float64.
    linear_weight : torch.Tensor
        (C, D), or (C, d1, ..., dk, D) for a K-dimensional loss (then computed as torch's
        reference composition, logits included).
    target : torch.Tensor
        Class indices (N,) or () (any integer dtype), or probabilities of the logits' shape.
    linear_bias : torch.Tensor, optional
        (C,) or (C, d1, ..., dk).
    weight, reduction, label_smoothing
        As in `cross_entropy`.
    ignore_index : int, optional
        None (torch's default here) means -100 for class indices; an error with
        probabilities.
    options : torch.nn.LinearCrossEntropyOptions, optional
        Accepted for drop-in use: its `batch_chunk_size` is honored. mlecore chunks with or
        without it (its chunked path is exact and supports every option).
    softcap, lse_square_scale, return_stats, backend
        As in `cross_entropy`.
    chunk_size : int, optional
        Rows per chunk; by default as in `mlecore.linear_cross_entropy`.

    Returns
    -------
    torch.Tensor or CrossEntropyStats
        The loss in the input's dtype, with autograd to input, linear_weight and linear_bias
        (and to probability targets, through the reference composition).

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> x = torch.randn(6, 4, requires_grad=True)
    >>> w = torch.randn(10, 4, requires_grad=True)
    >>> y = torch.tensor([0, 3, 9, 1, 1, 2])
    >>> loss = mt.linear_cross_entropy(x, w, y, chunk_size=4)
    >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(x @ w.T, y)))
    True
    >>> loss.backward()
    >>> w.grad.shape
    torch.Size([10, 4])
    """
    x = _float_input(input)
    lw = _float_input(linear_weight, "linear_weight")
    if linear_bias is not None:
        _float_input(linear_bias, "linear_bias")
    classes, out_features = _check_shapes(x, lw, linear_bias)
    for name, t in (("linear_weight", lw), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != x.dtype:  # torch's F.linear refuses it too
            raise RuntimeError(f"expected input and {name} to have the same dtype, got "
                               f"{x.dtype} and {t.dtype}")
    is_index = _target_kind(target)
    logits_shape = (*x.shape[:-1], classes, *out_features)
    if tuple(target.shape) == logits_shape and not is_index:
        if ignore_index is not None:
            raise RuntimeError("ignore_index cannot be specified when target contains "
                               "probabilities")
    ignore = -100 if ignore_index is None else ignore_index
    reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore)
    softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
    for name, t in (("linear_weight", lw), ("target", target), ("linear_bias", linear_bias)):
        if t is not None:
            _same_device(t, x, name)
    _, loss_shape = _spec.class_layout(logits_shape, target.shape, is_index)
    chunk = _chunk(options, chunk_size, math.prod(x.shape[:-1]), classes, x.dtype)
    transformed = any(_transformed(t) for t in (x, lw, linear_bias) if t is not None)
    if out_features or transformed or (not is_index and target.requires_grad):
        # torch's reference composition: the logits exist (K-dimensional logits, a torch.func
        # transform, or a gradient to the target).
        logits = torch.nn.functional.linear(
            x, lw.reshape(-1, x.shape[-1]),
            None if linear_bias is None else linear_bias.reshape(-1)).reshape(logits_shape)
        return cross_entropy(logits, target, weight, ignore, reduction, eps, softcap=softcap,
                             lse_square_scale=z, return_stats=return_stats, backend=backend)
    w = _check_weight(weight, classes, x)
    x2 = x if x.dim() == 2 else x.unsqueeze(0)
    t = target.reshape(-1) if is_index else target.reshape(-1, classes)
    out = (_linear_ops_eager(x2, lw, t, linear_bias, w, ignore, eps, softcap, z, chunk,
                         reduction, return_stats)
           if backend in _EAGER and _eager.usable(x2) else None)
    if out is None:
        op = _linear_ops(backend, x)
        grad = torch.is_grad_enabled() and reduction != "none"
        needs = (grad and x.requires_grad, grad and lw.requires_grad,
                 grad and linear_bias is not None and linear_bias.requires_grad)
        out = op(x2, lw, t, linear_bias, w, ignore, eps, softcap, z, chunk, reduction,
                 *needs, return_stats)
    loss, lse, denom, hits, *_ = out
    loss = (loss.reshape(loss_shape) if reduction == "none" else loss).to(x.dtype)
    if (return_stats and torch.is_grad_enabled() and (x.requires_grad or lw.requires_grad)
            and not torch.compiler.is_compiling()):  # a traced backward would raise always
        lse = _NoGradient.apply(lse, x if x.requires_grad else lw)
    return _finish(loss, lse, denom, hits, t, ignore, reduction, loss_shape, x.dtype, z,
                   return_stats)


class _NoGradient(torch.autograd.Function):
    """The fused loss's per-row log-sum-exps, tied to an input so that a backward pass
    through them is an error, not a gradient silently left out: their gradient would need
    the (N, C) logits the fused loss never holds."""

    @staticmethod
    def forward(ctx, lse, tie):
        return lse.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError(
            "mlecore: stats.lse of linear_cross_entropy carries no gradient (it would need "
            "the logits the fused loss never holds); for a z-loss pass lse_square_scale=, "
            "or take stats.lse.detach()")


def _linear_ops(backend: str, x: Tensor):
    """The forward operator: the same backend and device rules as every other operator
    (the Rust kernel on CPU, torch's operations elsewhere)."""
    return TORCH.forward if ops(backend, x) is _ops.TORCH else RUST.forward
