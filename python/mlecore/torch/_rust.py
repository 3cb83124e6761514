"""CPU kernels of the operators: the Rust kernels on the tensors' own memory.

Contiguous CPU tensors are handed over as numpy views (no copy; bfloat16 as its uint16 bits);
outputs are allocated by torch and written by Rust in place.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _mlecore as _ext
from .._kernels import CeRows
from ._buffers import POOL
from ._reference import compute_dtype

#: numpy's name for each dtype the kernels read or write (bfloat16 as its uint16 bits).
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.bfloat16: np.uint16, torch.int64: np.int64, torch.int32: np.int32,
          torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8,
          torch.uint16: np.uint16, torch.uint32: np.uint32, torch.uint64: np.uint64}


class _Memory:
    """A tensor's memory as numpy sees it (the array interface), holding the tensor. Unlike
    `Tensor.numpy()`, it leaves the tensor's storage resizable: the caller's tensors keep
    every property they had."""

    def __init__(self, t: torch.Tensor):
        dtype = np.dtype(_NUMPY[t.dtype])
        self.tensor = t
        self.__array_interface__ = {
            "data": (t.data_ptr(), False),
            "shape": tuple(t.shape),
            "strides": tuple(s * dtype.itemsize for s in t.stride()),
            "typestr": dtype.str,
            "version": 3,
        }


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (no copy)."""
    t = t.detach()
    if t.numel() == 0:
        return np.empty(tuple(t.shape), _NUMPY[t.dtype])
    return np.asarray(_Memory(t))


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().contiguous()


def _weight(weight, x):
    return None if weight is None else as_numpy(_rows(weight.to(compute_dtype(x.dtype))))


def _target(target, x):
    if target.is_floating_point():
        return as_numpy(_rows(target.to(x.dtype)))
    return as_numpy(target.detach().reshape(-1).contiguous())


def _problem(x, target, weight, ignore_index: int, eps: float, z: float) -> CeRows:
    """The kernels' row form of a CPU call: numpy views of contiguous tensors."""
    return CeRows(as_numpy(x), _target(target, x), _weight(weight, x), ignore_index, eps, z,
                  tuple(target.shape), x.shape[-1])


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    x = _rows(x)
    out = torch.empty(x.shape[:-1], dtype=x.dtype)
    _ext.logsumexp_rows(as_numpy(x), as_numpy(out))
    return out


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    x = _rows(x)
    out = POOL.empty(x.shape, x.dtype)
    _ext.softmax_rows(as_numpy(x), as_numpy(out), True)
    return out


def softmax(x: torch.Tensor) -> torch.Tensor:
    x = _rows(x)
    out = POOL.empty(x.shape, x.dtype)
    _ext.softmax_rows(as_numpy(x), as_numpy(out), False)
    return out


def logsumexp_backward(grad: torch.Tensor, x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """grad·softmax(x), 0 on rows of all −inf: the softmax written once by Rust, scaled in place."""
    x = _rows(x)
    g = POOL.empty(x.shape, x.dtype)
    _ext.softmax_rows(as_numpy(x), as_numpy(g), False)
    g.mul_(grad.to(x.dtype).unsqueeze(-1))
    return g.masked_fill_((lse == -torch.inf).unsqueeze(-1), 0.0)


def _row_outputs(x: torch.Tensor):
    rows = x.shape[0]
    return (torch.empty(rows, dtype=torch.float64),
            torch.empty(rows, dtype=compute_dtype(x.dtype)),
            torch.empty(rows, dtype=torch.uint8))


def cross_entropy(x, target, weight, ignore_index: int, eps: float, z: float):
    x = _rows(x)
    loss, lse, hits = _row_outputs(x)
    total, denom = _problem(x, target, weight, ignore_index, eps, z).forward(
        as_numpy(loss), as_numpy(lse), as_numpy(hits))
    return loss, lse, torch.tensor(denom, dtype=torch.float64), hits


def cross_entropy_backward(grad_rows, x, target, weight, lse, ignore_index: int, eps: float,
                           z: float):
    x = _rows(x)
    g = POOL.empty(x.shape, x.dtype)
    scale = as_numpy(grad_rows.detach().to(torch.float64).contiguous())
    _problem(x, target, weight, ignore_index, eps, z).backward(
        as_numpy(_rows(lse.to(compute_dtype(x.dtype)))), scale, as_numpy(g))
    return g


def cross_entropy_with_grad(x, target, weight, ignore_index: int, eps: float, z: float,
                            scale, out: torch.Tensor | None):
    """The fused pass: (loss rows, lse, denominator, hits, gradient), the gradient scaled as
    the reduction `scale` ("mean", "sum", "none") or by the number `scale`. `out` may be `x`
    itself."""
    loss, lse, hits = _row_outputs(x)
    inplace = out is not None and out.data_ptr() == x.data_ptr()
    grad = out if out is not None else torch.empty_like(x)
    total, denom = _problem(x, target, weight, ignore_index, eps, z).fused(
        scale, None if inplace else as_numpy(grad), as_numpy(loss), as_numpy(lse),
        as_numpy(hits))
    return loss, lse, torch.tensor(denom, dtype=torch.float64), hits, grad
