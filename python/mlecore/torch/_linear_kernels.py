"""The two implementations of the fused linear cross-entropy operators on (N, D) inputs.

`rust`: CPU tensors of float32 and float64 go to `mlecore._linear_chunks.run` on numpy views of
their memory (numpy's BLAS for the products: 1.25× faster than torch's CPU matmul on the GPT-2 head
here, and the Rust kernel over each chunk); float16 and bfloat16 are computed in float32
copies, the weight gradient accumulated in float32. `torch`: the same chunk loop in torch's
operations, for CUDA and every other device (and `backend="torch"`).

Both return (loss, lse, denom, hits, dx, dw, db): the loss reduced as `reduction` asks (per
row for "none") in float64, and the gradients that `needs` asks for (empty tensors for the
others), of the reduced loss, or of Σ row_scale·loss when `row_scale` is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _linear_chunks
from . import _reference as R
from ._functional import _prob_hits
from ._rust import as_numpy, dense, target_of, weight_of

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


def rust(x, lw, target, bias, weight, ignore_index, eps, softcap, z, chunk, reduction,
         needs, stats, row_scale=None):
    cdt = R.compute_dtype(x.dtype)
    xc = dense(x.to(cdt))
    wc = dense(lw.to(cdt))
    bc = None if bias is None else as_numpy(dense(bias.to(cdt)))
    w = None if weight is None else as_numpy(weight_of(weight, xc))
    p = _linear_chunks.Linear(as_numpy(xc), as_numpy(wc), bc, as_numpy(target_of(target, xc)),
                       w, ignore_index,
                       eps, softcap, z, reduction, chunk, not target.is_floating_point(),
                       tuple(target.shape), (x.shape[0],), None)
    grads = _grads_like(x, lw, needs, cdt)
    views = _linear_chunks.Grads(*(None if g is None else as_numpy(g) for g in grads))
    if row_scale is not None:
        views.row_scale = as_numpy(row_scale.detach().to(torch.float64).contiguous())
    r = _linear_chunks.run(p, stats, views)
    hits = torch.from_numpy(r.hits.astype("uint8")) if stats else x.new_empty(
        _EMPTY, dtype=torch.uint8)
    loss = _reduced(torch.from_numpy(r.loss), r.total, r.denom, reduction)
    return (loss, torch.from_numpy(r.lse), torch.tensor(r.denom, dtype=torch.float64), hits,
            *_out(grads, x, lw, bias))


def _denominator(t: Tensor, classes: int, weight, ignore_index: int, dtype) -> Tensor:
    if t.is_floating_point():
        return torch.tensor(float(t.shape[0]), dtype=torch.float64, device=t.device)
    y, valid = R.check_targets(t, classes, ignore_index)
    w = torch.ones(classes, dtype=dtype, device=t.device) if weight is None else weight
    wy = w.to(torch.float64)[torch.where(valid, y, 0)] if classes else \
        torch.zeros(y.shape, dtype=torch.float64, device=t.device)
    return torch.where(valid, wy, torch.zeros_like(wy)).sum()


def torch_ops(x, lw, target, bias, weight, ignore_index, eps, softcap, z, chunk, reduction,
              needs, stats, row_scale=None):
    cdt = R.compute_dtype(x.dtype)
    n = x.shape[0]
    c = lw.shape[0]
    xc, wc = x.detach().to(cdt), lw.detach().to(cdt)
    bc = None if bias is None else bias.detach().to(cdt)
    t = target.detach()
    t = t.to(cdt) if t.is_floating_point() else t.reshape(-1)
    wt = None if weight is None else weight.to(cdt)
    denom = _denominator(t, c, wt, ignore_index, cdt)
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
    for i in range(0, n, max(1, chunk)):
        j = min(n, i + chunk)
        logits = xc[i:j] @ wc.T
        if bc is not None:
            logits = logits + bc
        rows = logits if softcap is None else softcap * torch.tanh(logits / softcap)
        loss[i:j], lse[i:j], _, h = R.cross_entropy_rows(rows, t[i:j], wt, ignore_index,
                                                          eps, z)
        if stats:
            hits[i:j] = _prob_hits(logits, t[i:j]) if t.is_floating_point() else h
        if not any(needs):
            continue
        scale = row_scale[i:j] if row_scale is not None else factor.expand(j - i)
        g = R.cross_entropy_backward(scale, rows, t[i:j], wt, lse[i:j], ignore_index, eps, z)
        if softcap is not None:
            g = g * (1 - (rows / softcap) ** 2)
        if grads[0] is not None:
            grads[0][i:j] = g @ wc
        if grads[1] is not None:
            grads[1].addmm_(g.T, xc[i:j])
        if grads[2] is not None:
            grads[2] += g.sum(0, dtype=torch.float64)
    return (_reduced(loss, loss.sum(), denom, reduction), lse, denom, hits,
            *_out(grads, x, lw, bias))
