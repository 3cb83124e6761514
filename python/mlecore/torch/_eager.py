"""The eager CPU path: the Rust kernels called without the torch dispatcher.

A call through a `torch.library` operator costs tens of microseconds in Python (the
dispatcher, the operator's autograd wrapper, a second operator for the backward), which at a
batch of 64 × 10 is 50 times the kernel. In plain eager mode on CPU tensors the functions of
`mlecore.torch` call the same Rust kernels directly instead: without autograd when nothing
needs a gradient, and through one `torch.autograd.Function` when something does, whose
backward calls the backward kernel. Everything else (torch.compile, export, fake tensors,
`torch.func` transforms, forward-mode AD, tensor subclasses and modes, other devices, shapes
and options this path does not take) goes to the operators of `_ops.py`, which are what
those see. Both paths compute the same numbers in the same order, bit for bit
(tests/test_torch_eager.py proves it), so which one ran is never visible in a result.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from .._spec import true_divide
from . import _reference as R
from . import _rust
from ._ops import _log_softmax_grad, ce_grads, log_softmax_grad, lse_grad, softmax_grad
from ._reference import compute_dtype

_Tensor = torch.Tensor
#: Tensor types that behave as plain tensors (a Parameter disables __torch_function__).
PLAIN = (torch.Tensor, torch.nn.Parameter)
_FLOAT = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))
_INDEX = frozenset(d for d in _rust.CODES if not d.is_floating_point)
_f64 = torch.float64


def usable(x) -> bool:
    """True when a call on `x` may skip the dispatcher: a plain CPU tensor of a float dtype,
    in eager mode, with no transform, forward-mode AD level, torch-function or dispatch mode
    active (each of those must see the operators)."""
    # is_compiling first: under torch.compile nothing after it is traced.
    return (not torch.compiler.is_compiling()
            and type(x) in PLAIN and x.is_cpu and x.dtype in _FLOAT
            and _fwad._current_level < 0
            and not torch._C._are_functorch_transforms_active()
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._len_torch_dispatch_stack())


def _scalar(v: float, dtype: torch.dtype) -> Tensor:
    """A 0-d tensor holding the float64 `v` rounded once to `dtype`, as `.to(dtype)` of a
    float64 tensor rounds it."""
    if dtype is _f64 or dtype is torch.float32:
        return torch.scalar_tensor(v, dtype=dtype)
    return torch.scalar_tensor(v, dtype=_f64).to(dtype)


def _reduced(total: float, denom: float, reduction: str, dtype) -> Tensor:
    # The operators' path computes the same division on float64 tensors (_spec.reduce_loss).
    return _scalar(total if reduction == "sum" else true_divide(total, denom), dtype)


def cross_entropy(x, target, weight, ignore: int, eps: float, z: float, reduction: str):
    """The loss of validated options on `x` (`usable`), or None where the operators must
    run (then they also validate shapes and raise): logits (N, C) or (C,), class indices or
    probabilities, no gradient wanted for the target."""
    if type(target) not in PLAIN or not target.is_cpu:
        return None
    nd = x.ndim
    if nd == 2:
        rows, classes = x.shape
    elif nd == 1:
        rows, classes = 1, x.shape[0]
    else:
        return None
    if target.dtype in _INDEX:
        if target.ndim != nd - 1 or (nd == 2 and target.shape[0] != rows):
            return None
    elif target.dtype not in _FLOAT or target.shape != x.shape or (
            target.requires_grad and torch.is_grad_enabled()):
        return None  # a mismatch to report, or the target's gradient: the operators
    if weight is not None and (type(weight) not in PLAIN or not weight.is_cpu
                               or weight.shape != (classes,)):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return _CrossEntropy.apply(x, target, weight, ignore, eps, z, reduction)
    xd = _rust.dense(_matrix(x))
    t, w = _rust.target_of(target, xd), _rust.weight_of(weight, xd)
    if reduction == "none":
        loss = torch.empty(rows, dtype=_f64)
        _rust.forward(xd, t, w, ignore, eps, z, loss, None, None, target.shape)
        return loss.reshape(x.shape[:nd - 1]).to(x.dtype)
    total, denom = _rust.forward(xd, t, w, ignore, eps, z, None, None, None, target.shape)
    return _reduced(total, denom, reduction, x.dtype)


def checked_labels(target: Tensor, classes: int, ignore: int) -> Tensor:
    """Class indices as int64 after the Rust range check (the `check_targets` operator's
    rule and error, without the dispatcher)."""
    _rust.check_labels(_rust.dense(target if target.ndim == 1 else target.reshape(-1)),
                       classes, ignore, shape=target.shape)
    return target if target.dtype is torch.int64 else target.to(torch.int64)


def _matrix(x: Tensor) -> Tensor:
    """Logits as rows: (C,) is one row."""
    return x if x.ndim == 2 else x.view(1, x.shape[0])


class _CrossEntropy(torch.autograd.Function):
    """cross_entropy with a gradient to the logits: the forward kernel, and the backward
    kernel from the saved log-sum-exps (what the operators' autograd runs, without the
    dispatcher). The backward is a pure function of what was saved, so a repeated backward
    gives the same gradient bit for bit."""

    @staticmethod
    def forward(ctx, x, target, weight, ignore, eps, z, reduction):
        xd = _rust.dense(_matrix(x))
        t, w = _rust.target_of(target, xd), _rust.weight_of(weight, xd)
        rows = xd.shape[0]
        lse = torch.empty(rows, dtype=compute_dtype(xd.dtype))
        loss = torch.empty(rows, dtype=_f64) if reduction == "none" else None
        total, denom = _rust.forward(xd, t, w, ignore, eps, z, loss=loss, lse=lse,
                                     shape=target.shape)
        # x itself, not its detached copy: a higher derivative differentiates through it.
        ctx.save_for_backward(x, t, w, lse)
        ctx.options = (ignore, eps, z, reduction, denom)
        if loss is not None:
            return loss.reshape(x.shape[:-1]).to(x.dtype)
        return _reduced(total, denom, reduction, x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, t, w, lse = ctx.saved_tensors
        ignore, eps, z, reduction, denom = ctx.options
        xm = _matrix(x)
        batched = _batched(g)
        if reduction == "none":
            grad_rows = g.reshape(-1).to(_f64)
        elif not torch.is_grad_enabled() and not batched:
            # The operators' path scales each row by g / denom computed on float64 tensors:
            # the same number, handed over as one factor.
            s = g.item()
            s = s if reduction == "sum" else true_divide(s, denom)
            gx = _rust.backward(_rust.dense(xm), t, w, ignore, eps, z, lse, s)
            return gx if x.ndim == 2 else gx.view(x.shape), None, None, None, None, None, None
        else:
            s = g.to(_f64)
            grad_rows = (s if reduction == "sum" else s / denom).expand(xm.shape[0])
        if batched:  # a batch of incoming gradients: torch's operations, which vmap
            gx = R.cross_entropy_backward(grad_rows, xm, t if t.is_floating_point() else
                                          t.reshape(-1), w, lse, ignore, eps, z)
        else:
            gx = ce_grads(ctx, grad_rows, xm, t, w, lse, ignore, eps, z,
                          _rust.cross_entropy_backward)[0]
        return gx.view(x.shape), None, None, None, None, None, None


def _batched(g: Tensor) -> bool:
    """True for a batch of incoming gradients (`is_grads_batched`, the legacy vmap; a
    functorch transform): a tensor without memory of its own, for torch's operations."""
    f = torch._C._functorch
    return f.is_functorch_wrapped_tensor(g) or f.is_legacy_batchedtensor(g)


def _2d(t: Tensor) -> Tensor:
    """(…, C) as (R, C) (an explicit R: C may be 0)."""
    return t if t.ndim == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def logsumexp(x, dims: tuple[int, ...]):
    """logsumexp of `x` (`usable`) over its last axis, or None where the operators must run
    (other axes)."""
    nd = x.ndim
    if nd == 0 or dims != (nd - 1,):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return _LogSumExp.apply(x)
    return _rust.logsumexp(x)


def normalized(x, dims: tuple[int, ...], log: bool):
    """softmax or log_softmax of `x` (`usable`) over its last axis, or None."""
    nd = x.ndim
    if nd == 0 or dims != (nd - 1,):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return (_LogSoftmax if log else _Softmax).apply(x)
    return _rust._softmax(x, log)


# The kernels take rows of any leading shape (memory and a row length), so the outputs have
# the input's shape from the start: a Function's output is never a view of a temporary.

class _LogSumExp(torch.autograd.Function):
    """logsumexp over the last axis: the operator's CPU kernels without the dispatcher."""

    @staticmethod
    def forward(ctx, x):
        out = _rust.logsumexp(x)
        # The output itself: a higher derivative differentiates through it.
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        return lse_grad(grad.reshape(-1), _2d(x), out.reshape(-1),
                        _rust.logsumexp_backward).view(x.shape)


def _normalizer(log: bool):
    """The Function of log_softmax (`log`) or softmax over the last axis: the operator's CPU
    kernel and backward rule without the dispatcher."""
    rule, kernel = (log_softmax_grad, _log_softmax_grad) if log else (softmax_grad,
                                                                      R.softmax_grad)

    class Normalized(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = _rust._softmax(x, log)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            (out,) = ctx.saved_tensors
            return rule(_2d(grad), _2d(out), kernel).view(grad.shape)

    Normalized.__name__ = Normalized.__qualname__ = "_LogSoftmax" if log else "_Softmax"
    return Normalized


_LogSoftmax, _Softmax = _normalizer(True), _normalizer(False)
