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
    # Sizes as separate ints: torch parses a sequence of sizes a microsecond slower.
    return [torch.empty(*s, dtype=t, device=x.device) if need else None
            for s, t, need in zip(shapes, dtypes, needs, strict=True)]


def _out(grads, x, lw, bias):
    """The gradients in the dtypes of x, w and bias; an empty tensor for one not asked for."""
    like = (x, lw, bias)
    return tuple(x.new_empty(_EMPTY) if g is None else g if g.dtype == t.dtype else
                 g.to(t.dtype) for g, t in zip(grads, like, strict=True))


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
    def factor(denom: Tensor, reduction: str) -> Tensor:
        return torch.where(denom == 0, 0.0, 1.0 / denom) if reduction == "mean" else \
            torch.ones_like(denom)

    @staticmethod
    def rows(rows, t, weight, ignore_index, eps, z, scale, loss, lse, hits):
        """Loss and log-sum-exp of each row into `loss`, `lse` (and `hits`, when given);
        with `scale` (the factor, or float64 per row) the rows' gradient."""
        loss[:], lse[:], _, h = R.cross_entropy_rows(rows, t, weight, ignore_index, eps, z)
        if hits is not None:
            hits[:] = h
        if scale is None:
            return None
        scale = scale.expand(rows.shape[0]) if scale.ndim == 0 else scale
        return R.cross_entropy_backward(scale, rows, t, weight, lse, ignore_index, eps, z)


class _RustRows:
    """A chunk's rows in the Rust kernels (CPU), the gradient written over the logits."""

    @staticmethod
    def denominator(t, classes, weight, ignore_index, dtype) -> float:
        if t.is_floating_point():
            return float(t.shape[0])
        return _rust.check_labels(t, classes, ignore_index, weight)

    @staticmethod
    def factor(denom: float, reduction: str) -> float:
        return (1.0 / denom if denom else 0.0) if reduction == "mean" else 1.0

    @staticmethod
    def rows(rows, t, weight, ignore_index, eps, z, scale, loss, lse, hits):
        if scale is None:
            _rust.forward(rows, t, weight, ignore_index, eps, z, loss, lse, hits)
            return None
        if isinstance(scale, float):  # the factor, applied inside the kernel
            _rust.fused(rows, t, weight, ignore_index, eps, z, scale, rows, loss, lse, hits)
            return rows
        # The gradient of the sum over the logits in place; the per-row factors after.
        _rust.fused(rows, t, weight, ignore_index, eps, z, 1.0, rows, loss, lse, hits)
        return rows.mul_(scale.to(rows.dtype).unsqueeze(-1))


def _compute(t: Tensor, cdt: torch.dtype) -> Tensor:
    """`t` without autograd, contiguous, in the compute dtype (no copy when it is)."""
    return _rust.dense(t.detach() if t.dtype == cdt else t.detach().to(cdt))


def run(kernel, x, lw, target, bias, weight, ignore_index, eps, softcap, z, chunk, reduction,
        needs, stats, row_scale=None):
    """The chunk loop: each chunk's logits, `kernel`'s loss and gradient over its rows, then
    the chunk's share of dx = g·w, dw += gᵀ·x and db += Σ g."""
    cdt = R.compute_dtype(x.dtype)
    n = x.shape[0]
    c = lw.shape[0]
    xc, wc = _compute(x, cdt), _compute(lw, cdt)
    bc = None if bias is None else _compute(bias, cdt)
    t = target.detach()
    t = _compute(t, cdt) if t.is_floating_point() else _rust.dense(t.reshape(-1))
    wt = None if weight is None else _compute(weight, cdt)
    denom = kernel.denominator(t, c, wt, ignore_index, cdt)
    factor = kernel.factor(denom, reduction) if row_scale is None else None
    grads = _grads_like(x, lw, needs, cdt)
    dx, dw, db = grads
    if db is not None:
        db.zero_()
    if dw is not None and n == 0:
        dw.zero_()  # no chunk writes it
    loss = torch.empty(n, dtype=torch.float64, device=x.device)
    lse = torch.empty(n, dtype=cdt, device=x.device)
    hits = torch.empty(n if stats else 0, dtype=torch.uint8, device=x.device)
    wanted = any(needs)
    step = max(1, chunk)
    # One chunk's logits at a time, in one reused buffer (the Rust kernel writes their
    # gradient over them). A batch of one chunk (most small calls) takes the tensors whole:
    # each slice of a tensor costs a microsecond.
    zbuf = torch.empty(min(step, n), c, dtype=cdt, device=x.device) if n > step else None
    for i in range(0, n, step):
        j = min(n, i + step)
        whole = zbuf is None
        xs, ts = (xc, t) if whole else (xc[i:j], t[i:j])
        if whole:
            logits = xs @ wc.T if bc is None else torch.addmm(bc, xs, wc.T)
        else:
            logits = zbuf[: j - i]
            if bc is None:
                torch.mm(xs, wc.T, out=logits)
            else:
                torch.addmm(bc, xs, wc.T, out=logits)
        rows = logits if softcap is None else softcap * torch.tanh(logits / softcap)
        if stats and t.is_floating_point():
            # On the logits the loss sees (soft-capped), as cross_entropy and class indices
            # judge them; before the kernel overwrites them with their gradient.
            hits[i:j] = _prob_hits(rows, ts)
        scale = chain = None
        if wanted:
            scale = factor if row_scale is None else row_scale if whole else row_scale[i:j]
            if softcap is not None:  # d(c·tanh(z/c))/dz, before a kernel overwrites rows
                chain = 1 - (rows / softcap) ** 2
        h = None if not stats or t.is_floating_point() else hits if whole else hits[i:j]
        g = kernel.rows(rows, ts, wt, ignore_index, eps, z, scale,
                        *((loss, lse) if whole else (loss[i:j], lse[i:j])), h)
        if g is None:
            continue
        if chain is not None:
            g = g.mul_(chain)
        if dx is not None:
            torch.mm(g, wc, out=dx if whole else dx[i:j])
        if dw is not None:
            if i == 0:
                torch.mm(g.T, xs, out=dw)
            else:
                dw.addmm_(g.T, xs)
        if db is not None:
            db += g.sum(0, dtype=torch.float64)
    if not isinstance(denom, Tensor):
        denom = torch.scalar_tensor(denom, dtype=torch.float64)
    return (_reduced(loss, loss.sum(), denom, reduction), lse, denom, hits,
            *_out(grads, x, lw, bias))


def rust(*args, **kwargs):
    return run(_RustRows, *args, **kwargs)


def torch_ops(*args, **kwargs):
    return run(_TorchRows, *args, **kwargs)
