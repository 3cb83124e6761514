"""The same row operations in torch's own operations: the kernels of every device but the CPU
(CUDA above all), the `backend="torch"` path, and the differentiable formulas used for higher
derivatives. They follow mlecore's semantics exactly, edge cases included, so both backends
agree (see the README's table of deliberate differences from torch)."""

from __future__ import annotations

import torch

from .._spec import label_error


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def wide_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices as int64, so that a label and `ignore_index` compare exactly whatever
    the label's width (a uint8 156 is not −100). uint64 values beyond int64 wrap to negative
    numbers here; `labels` marks them invalid."""
    return target if target.dtype == torch.int64 else target.to(torch.int64)


def labels(target: torch.Tensor, classes: int, ignore_index: int):
    """(y, valid, bad) of class indices: int64 labels, where they are not ignored, and where
    they are out of range."""
    y = wide_labels(target)
    valid = y != ignore_index
    out = (y < 0) | (y >= classes)
    if target.dtype == torch.uint64:
        # A uint64 of 2^63 or more reads as negative in int64: out of range, never ignored.
        valid = valid | (y < 0)
    return y, valid, valid & out


def check_targets(target: torch.Tensor, classes: int, ignore_index: int):
    """(y, valid) of `labels`, or IndexError for a class index outside [0, classes) that is
    not ignore_index.

    One reduction and one host sync: on CUDA this replaces a device-side assert.
    """
    y, valid, bad = labels(target, classes, ignore_index)
    if target.numel() and bool(bad.any()):
        position = int(bad.reshape(-1).nonzero()[0, 0])
        value = int(y.reshape(-1)[position])
        if target.dtype == torch.uint64 and value < 0:
            value += 2**64
        raise label_error(position, value, tuple(target.shape), classes, ignore_index)
    return y, valid


def _weights(weight, classes, like):
    if weight is None:
        return torch.ones(classes, dtype=like.dtype, device=like.device)
    return weight.to(like.dtype)


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """log Σ exp over the last axis; an empty row gives −inf."""
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], -torch.inf, dtype=x.dtype, device=x.device)
    return torch.logsumexp(x.to(compute_dtype(x.dtype)), dim=-1).to(x.dtype)


def softmax_scale(x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """softmax from a saved log-sum-exp, 0 on rows whose log-sum-exp is −inf (all −inf)."""
    p = torch.exp(x - lse.unsqueeze(-1))
    return torch.where((lse == -torch.inf).unsqueeze(-1), torch.zeros_like(p), p)


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis, computed in float32 or float64 and rounded once; a row
    holding +inf or NaN is all NaN."""
    xc = x.to(compute_dtype(x.dtype))
    out = torch.softmax(xc, dim=-1)
    bad = (torch.isnan(xc) | (xc == torch.inf)).any(dim=-1, keepdim=True)
    return torch.where(bad, torch.full_like(out, torch.nan), out).to(x.dtype)


def softmax_grad(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient of softmax from its output y: y·(g − Σ g·y), in the compute dtype."""
    g, y = grad.to(compute_dtype(out.dtype)), out.to(compute_dtype(out.dtype))
    return (y * (g - (g * y).sum(-1, keepdim=True))).to(out.dtype)


def log_softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x − logsumexp(x); a row holding +inf or NaN is all NaN."""
    xc = x.to(compute_dtype(x.dtype))
    out = torch.log_softmax(xc, dim=-1)
    bad = (torch.isnan(xc) | (xc == torch.inf)).any(dim=-1, keepdim=True)
    return torch.where(bad, torch.full_like(out, torch.nan), out).to(x.dtype)


def _row_weights(x, target, weight, ignore_index, eps):
    """(v, A, valid): per-row class weights of the loss Σ v·(lse − x), their sums, and the
    non-ignored rows; v is None for class indices without smoothing (only the one-hot part)."""
    classes = x.shape[-1]
    w = _weights(weight, classes, x)
    if target.is_floating_point():
        v = w * (target.to(x.dtype) * (1 - eps) + eps / classes)
        return v, v.sum(-1), None
    y, valid, _ = labels(target, classes, ignore_index)
    y = torch.where(valid, y, 0)
    wy = w[y]
    a = (1 - eps) * wy + (eps / classes) * w.sum()
    v = (eps / classes) * w.expand_as(x) if eps > 0 else None
    return v, a, (valid, y, wy)


def cross_entropy_rows(x, target, weight, ignore_index: int, eps: float, z: float = 0.0):
    """(per-row losses in float64, per-row log-sum-exp, mean denominator as a 0-d float64,
    per-row hits: whether the row's class holds its maximum, as uint8). Counted rows add the
    z-loss z·lse²."""
    xc = x.to(compute_dtype(x.dtype))
    classes, rows = xc.shape[-1], xc.shape[0]
    lse = logsumexp_rows(xc)
    no_hits = torch.zeros(rows, dtype=torch.uint8, device=x.device)
    if classes == 0:
        # No classes: every label was ignored (checked), and a sum over no classes is 0.
        denom = float(rows) if target.is_floating_point() else 0.0
        return (torch.zeros(rows, dtype=torch.float64, device=x.device), lse,
                torch.tensor(denom, dtype=torch.float64, device=x.device), no_hits)
    v, a, hard = _row_weights(xc, target, weight, ignore_index, eps)
    poisoned = _poisoned(lse)
    zloss = z * lse * lse
    if hard is None:
        # 0·(lse − x) is 0 even where x = −inf: a zero probability adds nothing.
        terms = torch.where(v == 0, torch.zeros_like(v), v * (lse.unsqueeze(-1) - xc))
        loss = terms.sum(-1) + zloss if z else terms.sum(-1)
        loss = torch.where(poisoned, torch.nan, loss)
        denom = torch.tensor(float(rows), dtype=torch.float64, device=x.device)
        return loss.to(torch.float64), lse, denom, no_hits
    valid, y, wy = hard
    xy = xc.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    loss = (1 - eps) * wy * (lse - xy)
    if eps > 0:
        w = _weights(weight, classes, xc)
        loss = loss + (eps / classes) * (w * (lse.unsqueeze(-1) - xc)).sum(-1)
    # A row of total weight 0 contributes nothing; a row with +inf or NaN is NaN.
    loss = torch.where(a == 0, torch.zeros_like(loss), loss)
    if z:
        loss = loss + zloss
    loss = torch.where(poisoned, torch.nan, loss)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    denom = torch.where(valid, wy, torch.zeros_like(wy)).to(torch.float64).sum()
    hits = (valid & ~poisoned & (xy == xc.amax(-1))).to(torch.uint8)
    return loss.to(torch.float64), lse, denom, hits


def _poisoned(lse: torch.Tensor) -> torch.Tensor:
    """Rows holding +inf or NaN (their log-sum-exp is +inf or NaN): loss and gradient NaN."""
    return (lse == torch.inf) | torch.isnan(lse)


def cross_entropy_backward(grad_rows, x, target, weight, lse, ignore_index: int, eps: float,
                           z: float = 0.0):
    """d(Σ grad_rows·loss_rows)/dx: grad_rows·(A·softmax(x) − v); 0 on ignored rows and on
    the softmax term of rows of total weight A = 0; NaN on rows holding +inf or NaN."""
    if x.shape[-1] == 0:
        return torch.zeros_like(x)
    xc = x.to(compute_dtype(x.dtype))
    s = grad_rows.to(xc.dtype).unsqueeze(-1)
    v, a, hard = _row_weights(xc, target, weight, ignore_index, eps)
    lse = lse.to(xc.dtype).unsqueeze(-1)
    p = torch.exp(xc - lse)
    a = a.unsqueeze(-1)
    if z:  # the z-loss z·lse² adds 2·z·lse·softmax
        a = a + 2 * z * lse
    g = s * torch.where(a == 0, torch.zeros_like(p), a * p)
    if v is not None:
        g = g - s * v
    g = torch.where(_poisoned(lse), torch.nan, g)
    if hard is not None:
        valid, y, wy = hard
        hot = (s.squeeze(-1) * (1 - eps) * wy).unsqueeze(-1)
        g = g.scatter_add(-1, y.unsqueeze(-1), -hot)
        g = torch.where(valid.unsqueeze(-1), g, torch.zeros_like(g))
    return g.to(x.dtype)


def cross_entropy_target_grad(grad_rows, x, target, weight, lse, eps: float):
    """d(Σ grad_rows·loss_rows)/d target for probability targets."""
    xc = x.to(compute_dtype(x.dtype))
    w = _weights(weight, xc.shape[-1], xc)
    nll = lse.to(xc.dtype).unsqueeze(-1) - xc
    return (grad_rows.to(xc.dtype).unsqueeze(-1) * (1 - eps) * w * nll).to(target.dtype)
