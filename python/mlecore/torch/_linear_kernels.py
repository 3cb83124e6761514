"""The fused linear cross-entropy operators' one chunk loop on (N, D) inputs, in torch's
operations, with the row kernel of each chunk as a parameter.

`rust`: on CPU tensors the chunk's logits and the products dx = g·w, dw += gᵀ·x come from
torch (its BLAS and its thread pool: a torch user never runs numpy's OpenBLAS through
mlecore, whose threads would spin against torch's and whose fork handler can deadlock), and
the Rust fused kernel computes the loss and the logits' gradient over each chunk in place;
float16 and bfloat16 are computed in float32 copies, the weight gradient accumulated in
float32. `torch`: the same loop with torch's operations as the row kernel too, for CUDA and
every other device (and `backend="torch"`).

Both return (loss, lse, denom, hits, dx, dw, db): the loss reduced as `reduction` asks (per
row for "none") in float64, and the gradients that `needs` asks for (empty tensors for the
others), of the reduced loss, or of Σ row_scale·loss when `row_scale` is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _mlecore as _ext
from .._kernels import reworded
from . import _reference as R
from . import _rust
from ._functional import _prob_hits

_EMPTY = (0,)


def _reduced(rows: Tensor, total, denom: float, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    value = total if isinstance(total, Tensor) else torch.tensor(total, dtype=torch.float64)
    return value if reduction == "sum" else value / denom


def _grads_like(x, lw, needs, cdt, bias_dtype=torch.float64):
    n, d = x.shape
    c = lw.shape[0]
    shapes = ((n, d), (c, d), (c,))
    dtypes = (cdt, cdt, bias_dtype)
    return [torch.empty(s, dtype=t, device=x.device) if need else None
            for s, t, need in zip(shapes, dtypes, needs, strict=True)]


def _out(grads, x, lw, bias):
    """The gradients in the dtypes of x, w and bias; an empty tensor for one not asked for."""
    like = (x, lw, bias)
    return tuple(x.new_empty(_EMPTY) if g is None else g.to(t.dtype)
                 for g, t in zip(grads, like, strict=True))


def _denominator(t: Tensor, classes: int, weight, ignore_index: int, dtype) -> Tensor:
    if t.is_floating_point():
        return torch.tensor(float(t.shape[0]), dtype=torch.float64, device=t.device)
    y, valid = R.check_targets(t, classes, ignore_index)
    w = torch.ones(classes, dtype=dtype, device=t.device) if weight is None else weight
    wy = w.to(torch.float64)[torch.where(valid, y, 0)] if classes else \
        torch.zeros(y.shape, dtype=torch.float64, device=t.device)
    return torch.where(valid, wy, torch.zeros_like(wy)).sum()


class _TorchRows:
    """A chunk's rows in torch's operations: on every device."""

    @staticmethod
    def denominator(t, classes, weight, ignore_index, dtype) -> Tensor:
        return _denominator(t, classes, weight, ignore_index, dtype)

    @staticmethod
    def rows(rows, t, weight, ignore_index, eps, z, scale, loss, lse):
        """Loss and log-sum-exp of each row into `loss`, `lse`; the hits; and with `scale`
        (float64 per row) the rows' gradient."""
        loss[:], lse[:], _, hits = R.cross_entropy_rows(rows, t, weight, ignore_index, eps, z)
        if scale is None:
            return hits, None
        return hits, R.cross_entropy_backward(scale, rows, t, weight, lse, ignore_index, eps,
                                              z)


class _RustRows:
    """A chunk's rows in the Rust kernels (CPU), the gradient written over the logits."""

    @staticmethod
    def denominator(t, classes, weight, ignore_index, dtype) -> Tensor:
        if t.is_floating_point():
            return torch.tensor(float(t.shape[0]), dtype=torch.float64)
        labels = _rust.dense(t)
        w = None if weight is None else _rust.dense(weight.to(torch.float64))
        try:
            denom = _ext.check_labels(_rust.mem(labels), classes, ignore_index,
                                      None if w is None else _rust.mem(w))
        except IndexError as e:
            raise reworded(e, t.shape, classes, ignore_index) from None
        return torch.tensor(denom, dtype=torch.float64)

    @staticmethod
    def rows(rows, t, weight, ignore_index, eps, z, scale, loss, lse):
        hits = torch.empty(rows.shape[0], dtype=torch.uint8)
        if scale is None:
            _rust.forward(rows, t, weight, ignore_index, eps, z, loss, lse, hits)
            return hits, None
        # The gradient of the sum over the logits in place; the per-row factors after.
        _rust.fused(rows, t, weight, ignore_index, eps, z, 1.0, rows, loss, lse, hits)
        return hits, rows.mul_(scale.to(rows.dtype).unsqueeze(-1))


def run(kernel, x, lw, target, bias, weight, ignore_index, eps, softcap, z, chunk, reduction,
        needs, stats, row_scale=None):
    """The chunk loop: each chunk's logits, `kernel`'s loss and gradient over its rows, then
    the chunk's share of dx = g·w, dw += gᵀ·x and db += Σ g."""
    cdt = R.compute_dtype(x.dtype)
    n = x.shape[0]
    c = lw.shape[0]
    xc, wc = _rust.dense(x.detach().to(cdt)), _rust.dense(lw.detach().to(cdt))
    bc = None if bias is None else bias.detach().to(cdt)
    t = target.detach()
    t = _rust.dense(t.to(cdt) if t.is_floating_point() else t.reshape(-1))
    wt = None if weight is None else _rust.dense(weight.detach().to(cdt))
    denom = kernel.denominator(t, c, wt, ignore_index, cdt)
    if row_scale is None:
        factor = torch.where(denom == 0, 0.0, 1.0 / denom) if reduction == "mean" else \
            torch.ones_like(denom)
    grads = _grads_like(x, lw, needs, cdt)
    for g in grads[1:]:
        if g is not None:
            g.zero_()
    loss = torch.empty(n, dtype=torch.float64, device=x.device)
    lse = torch.empty(n, dtype=cdt, device=x.device)
    hits = torch.empty(n if stats else 0, dtype=torch.uint8, device=x.device)
    # One chunk's logits at a time, in one reused buffer (the Rust kernel writes their
    # gradient over them).
    zbuf = torch.empty(min(max(1, chunk), max(n, 1)), c, dtype=cdt, device=x.device)
    for i in range(0, n, max(1, chunk)):
        j = min(n, i + chunk)
        logits = zbuf[: j - i]
        if bc is None:
            torch.mm(xc[i:j], wc.T, out=logits)
        else:
            torch.addmm(bc, xc[i:j], wc.T, out=logits)
        if stats and t.is_floating_point():
            hits[i:j] = _prob_hits(logits, t[i:j])
        rows = logits if softcap is None else softcap * torch.tanh(logits / softcap)
        scale = chain = None
        if any(needs):
            scale = row_scale[i:j] if row_scale is not None else factor.expand(j - i)
            if softcap is not None:  # d(c·tanh(z/c))/dz, before a kernel overwrites rows
                chain = 1 - (rows / softcap) ** 2
        h, g = kernel.rows(rows, t[i:j], wt, ignore_index, eps, z, scale, loss[i:j],
                           lse[i:j])
        if stats and not t.is_floating_point():
            hits[i:j] = h
        if g is None:
            continue
        if chain is not None:
            g = g.mul_(chain)
        if grads[0] is not None:
            torch.mm(g, wc, out=grads[0][i:j])
        if grads[1] is not None:
            grads[1].addmm_(g.T, xc[i:j])
        if grads[2] is not None:
            grads[2] += g.sum(0, dtype=torch.float64)
    return (_reduced(loss, loss.sum(), denom, reduction), lse, denom, hits,
            *_out(grads, x, lw, bias))


def rust(*args, **kwargs):
    return run(_RustRows, *args, **kwargs)


def torch_ops(*args, **kwargs):
    return run(_TorchRows, *args, **kwargs)
