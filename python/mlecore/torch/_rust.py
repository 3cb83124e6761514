"""The Rust kernels on CPU tensors' own memory: the CPU kernels of the operators, and what the
eager path (`_eager.py`) calls without the dispatcher.

A tensor crosses as its memory, ``(data_ptr, numel, dtype code, tensor)`` (`mem`), which
the extension reads in place (`rust/python/mem.rs`); no numpy view is built. Every tensor
handed over must be contiguous (`dense`); the tuple holds the tensor, so its memory lives
until the call returns.
"""

from __future__ import annotations

import torch

from .. import _mlecore as _ext
from .._kernels import reworded
from ._buffers import POOL
from ._reference import compute_dtype

#: The extension's code for each dtype (rust/python/mem.rs, `Dtype`).
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3,
         torch.int64: 4, torch.int32: 5, torch.int16: 6, torch.int8: 7, torch.uint64: 8,
         torch.uint32: 9, torch.uint16: 10, torch.uint8: 11}

#: Calls on fewer elements run on one thread (a task covers 64 Ki elements: rust/parallel.rs).
_PARALLEL = 1 << 16
_followed = [0]


def follow_torch_threads(x: torch.Tensor) -> None:
    """Before a kernel on `x` large enough for threads, hands torch's intra-op thread count
    to the kernels (used unless mlecore has a count of its own): a process that limits
    torch's threads, a DataLoader worker or a job sharing its cores, limits mlecore's too."""
    if x.numel() < _PARALLEL:
        return
    n = torch.get_num_threads()
    if n != _followed[0]:
        _ext.follow_threads(n)
        _followed[0] = n


def mem(t: torch.Tensor) -> tuple[int, int, int, torch.Tensor]:
    """A contiguous CPU tensor's memory as the extension takes it; the tuple holds `t`, so
    a temporary's memory outlives the call it is passed to."""
    return (t.data_ptr(), t.numel(), CODES[t.dtype], t)


def dense(x: torch.Tensor) -> torch.Tensor:
    """`x`'s values in contiguous memory: `x` itself when it is contiguous (the kernels read
    its memory and build no graph), else a copy without autograd."""
    return x if x.is_contiguous() else x.detach().contiguous()


def weight_of(weight, x):
    """Class weights as the kernels read them: contiguous, of the compute dtype."""
    if weight is None:
        return None
    cdt = compute_dtype(x.dtype)
    return dense(weight if weight.dtype == cdt else weight.detach().to(cdt))


def target_of(target, x):
    """Class indices flattened, or probabilities of the logits' dtype; contiguous."""
    if target.is_floating_point():
        return dense(target if target.dtype == x.dtype else target.detach().to(x.dtype))
    return dense(target if target.ndim == 1 else target.reshape(-1))


def problem(x, t, w, ignore_index: int, eps: float, z: float) -> tuple:
    """The kernels' description of a call (`rust/python/calls.rs`, `Problem`) from
    contiguous tensors that the caller keeps: logits `x`, `target_of` and `weight_of`."""
    return (mem(x), x.shape, mem(t), None if w is None else mem(w), ignore_index, eps, z)


def check_labels(t, classes: int, ignore_index: int, weight=None, shape=None) -> float:
    """Checks contiguous class indices `t` in Rust (a bad one reported at its place in a
    target of `shape`); returns the `mean` denominator (summed float64 `weight`s of the
    counted labels, or their count)."""
    w = None if weight is None else dense(weight.to(torch.float64))
    try:
        return _ext.check_labels(mem(t), classes, ignore_index, None if w is None else mem(w))
    except IndexError as e:
        raise reworded(e, t.shape if shape is None else shape, classes, ignore_index) from None


def forward(x, t, w, ignore_index, eps, z, loss=None, lse=None, hits=None, shape=None):
    """(Σ loss, mean denominator) of contiguous operands, per-row results into the given
    tensors; a bad label is reported at its place in a target of `shape`."""
    follow_torch_threads(x)
    try:
        return _ext.cross_entropy_rows(problem(x, t, w, ignore_index, eps, z),
                                       None if loss is None else mem(loss),
                                       None if lse is None else mem(lse),
                                       None if hits is None else mem(hits))
    except IndexError as e:
        raise reworded(e, t.shape if shape is None else shape, x.shape[-1],
                       ignore_index) from None


def backward(x, t, w, ignore_index, eps, z, lse, scale, scale_rows=None):
    """The gradient of contiguous operands from saved log-sum-exps `lse`, row r scaled by
    `scale_rows[r]` (float64) or all by the number `scale`: a new tensor (pooled)."""
    follow_torch_threads(x)
    g = POOL.like(x)
    _ext.cross_entropy_backward_rows(problem(x, t, w, ignore_index, eps, z), mem(lse), scale,
                                     None if scale_rows is None else mem(scale_rows), mem(g))
    return g


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    x = dense(x)
    follow_torch_threads(x)
    out = torch.empty(x.shape[:-1], dtype=x.dtype)
    _ext.logsumexp_rows(mem(x), x.shape[-1], mem(out))
    return out


def _softmax(x: torch.Tensor, log: bool) -> torch.Tensor:
    x = dense(x)
    follow_torch_threads(x)
    out = POOL.like(x)
    _ext.softmax_rows(mem(x), x.shape[-1], mem(out), log)
    return out


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return _softmax(x, True)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return _softmax(x, False)


def logsumexp_backward(grad: torch.Tensor, x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """grad·softmax(x), 0 on rows of all −inf, in one Rust pass (`lse` is not needed: the
    kernel's own statistics tell an all −inf row)."""
    x = dense(x)
    follow_torch_threads(x)
    scale = dense(grad.detach().to(torch.float64).reshape(-1))
    out = POOL.like(x)
    _ext.logsumexp_grad_rows(mem(x), x.shape[-1], mem(scale), mem(out))
    return out


def row_outputs(x: torch.Tensor):
    """Fresh per-row results: losses (float64), log-sum-exps (compute dtype), hits (uint8)."""
    rows = x.shape[0]
    return (torch.empty(rows, dtype=torch.float64),
            torch.empty(rows, dtype=compute_dtype(x.dtype)),
            torch.empty(rows, dtype=torch.uint8))


def cross_entropy(x, target, weight, ignore_index: int, eps: float, z: float):
    x, t, w = dense(x), target_of(target, x), weight_of(weight, x)
    loss, lse, hits = row_outputs(x)
    total, denom = forward(x, t, w, ignore_index, eps, z, loss, lse, hits, target.shape)
    return (loss, lse, torch.tensor(denom, dtype=torch.float64), hits,
            torch.tensor(total, dtype=torch.float64))


def cross_entropy_backward(grad_rows, x, target, weight, lse, ignore_index: int, eps: float,
                           z: float):
    x, t, w = dense(x), target_of(target, x), weight_of(weight, x)
    scale = dense(grad_rows.to(torch.float64))
    lse = dense(lse.to(compute_dtype(x.dtype)))
    return backward(x, t, w, ignore_index, eps, z, lse, 1.0, scale)


def fused(x, t, w, ignore_index, eps, z, scale, grad, loss, lse, hits, shape=None):
    """The fused pass over contiguous operands: (Σ loss, mean denominator), per-row results
    into `loss`, `lse`, `hits`, and the gradient, scaled as the reduction `scale` ("mean",
    "sum", "none") or by the number `scale`, into `grad` (which may be `x` itself)."""
    inplace = grad.data_ptr() == x.data_ptr()
    follow_torch_threads(x)
    try:
        return _ext.cross_entropy_grad_rows(
            problem(x, t, w, ignore_index, eps, z), scale, None if inplace else mem(grad),
            mem(loss), mem(lse), None if hits is None else mem(hits))
    except IndexError as e:
        raise reworded(e, t.shape if shape is None else shape, x.shape[-1],
                       ignore_index) from None


def cross_entropy_with_grad(x, target, weight, ignore_index: int, eps: float, z: float,
                            scale, out: torch.Tensor | None):
    """The fused pass: (loss rows, lse, denominator, hits, gradient), the gradient scaled as
    the reduction `scale` ("mean", "sum", "none") or by the number `scale`. `out` may be `x`
    itself."""
    t, w = target_of(target, x), weight_of(weight, x)
    loss, lse, hits = row_outputs(x)
    grad = out if out is not None else torch.empty_like(x)
    _, denom = fused(x, t, w, ignore_index, eps, z, scale, grad, loss, lse, hits, target.shape)
    return loss, lse, torch.tensor(denom, dtype=torch.float64), hits, grad
