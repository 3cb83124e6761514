"""The user-facing torch API: torch.nn.functional's signatures on mlecore's operators."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _spec
from . import _eager, _rust
from . import _reference as R
from ._ops import TRANSFORMABLE, check_targets, ops

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The dtypes computed in their own precision.
_WIDE = (torch.float32, torch.float64)
#: The backends whose CPU calls may take the eager path (`_eager.py`).
_EAGER = ("auto", "rust")


def _float_input(x, name="input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype}; expected float16, bfloat16, float32 or "
                        "float64")
    return x


class _Rows:
    """A tensor with `dims` moved last and flattened to (rows, K) (`matrix`), and how to put
    a result back: `restore` for one of the input's shape, `kept_shape` for one per row."""

    def __init__(self, x: Tensor, dims: tuple[int, ...]):
        self.shape = x.shape
        if x.ndim == 0:
            x = x.reshape(1)
        kept = tuple(i for i in range(x.ndim) if i not in dims)
        self.perm = kept + dims
        xt = x.permute(self.perm)
        self.tshape = xt.shape
        self.kept_shape = tuple(x.shape[i] for i in kept)
        k = math.prod([x.shape[d] for d in dims])
        self.matrix = xt.reshape(math.prod(self.kept_shape), k)

    def restore(self, m: Tensor) -> Tensor:
        inverse = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inverse[p] = i
        return m.reshape(self.tshape).permute(inverse).reshape(self.shape)


def _class_rows(x: Tensor) -> _Rows:
    """(C,) → (1, C); (N, C) stays; (N, C, d1, …, dk) → (N·d1···dk, C)."""
    return _Rows(x, (_spec.class_axis(x.ndim),))


def logsumexp(input: Tensor, dim, keepdim: bool = False, *, backend: str = "auto") -> Tensor:
    """log Σ exp over `dim`, as `torch.logsumexp`, on mlecore's operators.

    Parameters
    ----------
    input : torch.Tensor
        float16, bfloat16 (computed in float32), float32 or float64; any device.
    dim : int or tuple of ints or None
        The dimensions to reduce; None reduces all.
    keepdim : bool, optional
        Keep the reduced dimensions with size one.
    backend : {"auto", "rust", "torch"}, optional
        "auto": Rust kernels on CPU, torch's operations elsewhere; "rust": Rust only (an error
        off the CPU); "torch": torch's operations everywhere.

    Returns
    -------
    torch.Tensor
        In the input's dtype. Its gradient is softmax(input), and 0 on a slice of all −inf
        (torch gives NaN there).

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> mt.logsumexp(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), dim=1)
    tensor([0.6931, 1.6931])
    """
    x = _float_input(input)
    dims = _spec.check_dim(dim, x.ndim)
    out = (_eager.logsumexp(x, dims) if backend in _EAGER and _eager.usable(x) else None)
    if out is None:
        rows = _Rows(x, dims)
        out = ops(backend, x).logsumexp(rows.matrix).reshape(rows.kept_shape)
    if keepdim:
        for d in dims:
            out = out.unsqueeze(d)
        if x.ndim == 0:
            out = out.reshape(())
    return out


def _normalized(input, dim, dtype, backend, which):
    """softmax or log_softmax over `dim`, the input cast to `dtype` first (torch's rule)."""
    if dtype is not None and isinstance(input, Tensor):
        input = input.to(dtype)
    x = _float_input(input)
    dims = _spec.check_dim(dim, x.ndim)
    if backend in _EAGER and _eager.usable(x):
        out = _eager.normalized(x, dims, which == "log_softmax")
        if out is not None:
            return out
    rows = _Rows(x, dims)
    return rows.restore(getattr(ops(backend, x), which)(rows.matrix))


def log_softmax(input: Tensor, dim, _stacklevel: int = 3, dtype: torch.dtype | None = None,
                *, backend: str = "auto") -> Tensor:
    """log softmax over `dim`, as `torch.nn.functional.log_softmax`, on mlecore's operators.

    Parameters
    ----------
    input : torch.Tensor
        float16, bfloat16, float32 or float64; any device.
    dim : int or tuple of ints or None
        The dimensions the softmax normalizes over (None: all). Required: torch's implicit
        choice of a dimension is deprecated there, and would differ here.
    _stacklevel : int, optional
        Accepted for torch's signature; unused.
    dtype : torch.dtype, optional
        The input is cast to it before the operation, as torch does (``dtype=torch.float32``
        for a float32 result from bfloat16 logits).
    backend : {"auto", "rust", "torch"}, optional
        As in `logsumexp`.

    Returns
    -------
    torch.Tensor
        Same shape, of `dtype` or the input's dtype; a slice holding +inf or NaN is all NaN.

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> mt.log_softmax(torch.tensor([0.0, 0.0]), dim=0)
    tensor([-0.6931, -0.6931])
    """
    return _normalized(input, dim, dtype, backend, "log_softmax")


def softmax(input: Tensor, dim, _stacklevel: int = 3, dtype: torch.dtype | None = None,
            *, backend: str = "auto") -> Tensor:
    """softmax over `dim`, as `torch.nn.functional.softmax`, on mlecore's operators.

    Parameters
    ----------
    input : torch.Tensor
        float16, bfloat16, float32 or float64; any device. float16 and bfloat16 are computed
        in float32 and rounded once.
    dim : int or tuple of ints or None
        The dimensions the softmax normalizes over (None: all). Required: torch's implicit
        choice of a dimension is deprecated there, and would differ here.
    _stacklevel : int, optional
        Accepted for torch's signature; unused.
    dtype : torch.dtype, optional
        The input is cast to it before the operation, as torch does.
    backend : {"auto", "rust", "torch"}, optional
        As in `logsumexp`.

    Returns
    -------
    torch.Tensor
        Same shape, of `dtype` or the input's dtype; a slice holding +inf or NaN is all NaN.

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> mt.softmax(torch.tensor([0.0, 0.0]), dim=0)
    tensor([0.5000, 0.5000])
    """
    return _normalized(input, dim, dtype, backend, "softmax")


def _target_kind(target: Tensor) -> bool:
    """True for class indices, False for probabilities (the rule of `_spec`)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    kind = ("b" if target.dtype == torch.bool else "c" if target.is_complex()
            else "f" if target.is_floating_point() else "i")
    return _spec.target_is_index(kind, target.dtype)


def _check_weight(weight, classes, x):
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or weight.shape != (classes,):
        raise _spec.weight_shape_error(classes, getattr(weight, "shape", type(weight).__name__))
    _same_device(weight, x, "weight")
    return weight


def _same_device(t: Tensor, x: Tensor, name: str) -> None:
    """torch's rule: every tensor argument on the input's device (a RuntimeError)."""
    if t.device != x.device:
        raise RuntimeError(f"{name} is on device {t.device}, not on the input's device "
                           f"{x.device}: every tensor argument must be on one device")


def _prepare(input, target, weight, ignore_index, reduction, label_smoothing,
             index_only=False):
    """(x, target rows, weight, ignore_index, ε, reduction, loss shape), validated."""
    reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
    x = _float_input(input)
    is_index = _target_kind(target)
    if index_only:
        _spec.index_only(is_index, target.dtype)
    classes, loss_shape = _spec.class_layout(x.shape, target.shape, is_index)
    _same_device(target, x, "target")
    w = _check_weight(weight, classes, x)
    t = target if is_index else _class_rows(target).matrix
    return x, t, w, ignore, eps, reduction, loss_shape


def _reduce(loss_rows, denom, reduction, loss_shape, dtype, total=None):
    """`_spec.reduce_loss` in `dtype`; the total is the rows' sum unless given (the kernels'
    own float64 sum, which the eager path uses too)."""
    if total is None and reduction != "none":
        total = loss_rows.sum()
    return _spec.reduce_loss(loss_rows, total, denom, reduction, loss_shape).to(dtype)


def _softcapped(x: Tensor, softcap: float | None) -> Tensor:
    """c·tanh(z/c) in the compute dtype, differentiable; `x` itself without a cap."""
    if softcap is None:
        return x
    return softcap * torch.tanh(x.to(R.compute_dtype(x.dtype)) / softcap)


def _prob_hits(rows: Tensor, t: Tensor) -> Tensor:
    """Whether each row's most probable target class holds the row's maximum logit (judged
    before a pass can overwrite the logits)."""
    with torch.no_grad():
        best = t.argmax(-1, keepdim=True)
        return rows.gather(-1, best).squeeze(-1) == rows.amax(-1)


class _Grafted(torch.autograd.Function):
    """`value` (computed without a graph) with the gradient of `graph`, a differentiable
    computation of the same quantity."""

    @staticmethod
    def forward(ctx, value, graph):
        ctx.dtype = graph.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        return None, g.to(ctx.dtype)


def _finish(loss, lse, denom, hits, t, ignore, reduction, loss_shape, dtype, z,
            return_stats):
    """The loss, or with `return_stats` its `CrossEntropyStats` (z-loss, lse, accuracy)."""
    if not return_stats:
        return loss
    with torch.no_grad():
        counted = (R.labels(t.reshape(-1), 1 << 62, ignore)[1] if not t.is_floating_point()
                   else torch.ones_like(lse, dtype=torch.bool))
        lse64 = lse.to(torch.float64)
        z_rows = torch.where(counted, z * lse64 * lse64, torch.zeros_like(lse64))
        z_loss = _reduce(z_rows, denom, reduction, loss_shape, dtype)
        n = counted.sum()
        accuracy = (hits.bool() & counted).sum().to(torch.float64) / n
    return _spec.CrossEntropyStats(loss, z_loss, lse.reshape(loss_shape).to(dtype), accuracy)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, softcap: float | None = None,
                  lse_square_scale: float = 0.0, return_stats: bool = False,
                  backend: str = "auto") -> Tensor:
    """Cross-entropy with exactly `torch.nn.functional.cross_entropy`'s semantics.

    Parameters
    ----------
    input : torch.Tensor
        Logits (C,), (N, C) or (N, C, d1, ..., dk); float16, bfloat16, float32 or float64.
    target : torch.Tensor
        Class indices (any integer dtype) of shape (), (N,) or (N, d1, ..., dk), or class
        probabilities of the input's shape.
    weight : torch.Tensor, optional
        One weight per class, shape (C,). (No gradient flows to it.)
    ignore_index : int, optional
        Class-index targets skipped by the loss, its gradient and the mean.
    reduction : {"mean", "sum", "none"}, optional
        As torch, weighted mean included.
    label_smoothing : float, optional
        ε in [0, 1].
    softcap : float, optional
        c > 0: the logits become c·tanh(z/c) first (Gemma 2), the gradient through it.
    lse_square_scale : float, optional
        s ≥ 0: each counted element adds s·lse² (the z-loss), with its gradient.
    return_stats : bool, optional
        Return a `mlecore.CrossEntropyStats` (loss, z_loss, lse, accuracy) of tensors.
    backend : {"auto", "rust", "torch"}, optional
        "auto": the Rust kernels on CPU (forward and backward are operators on the tensors'
        own memory), torch's own operations on other devices.

    Returns
    -------
    torch.Tensor or CrossEntropyStats
        The loss, in the input's dtype, carrying autograd (to input, and to probability
        targets).

    Raises
    ------
    IndexError
        A class index out of range, with its position (before any kernel runs on CUDA).

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    >>> loss = mt.cross_entropy(logits, torch.tensor([0]))
    >>> loss.backward()
    >>> torch.allclose(logits.grad, torch.softmax(logits, 1) - torch.tensor([1.0, 0, 0]))
    True
    """
    if softcap is None and not return_stats and backend in _EAGER and _eager.usable(input):
        how, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
        z = _spec.check_loss_options(None, lse_square_scale)[1]
        loss = _eager.cross_entropy(input, target, weight, ignore, eps, z, how)
        if loss is not None:
            return loss
    x, t, w, ignore, eps, reduction, loss_shape = _prepare(
        input, target, weight, ignore_index, reduction, label_smoothing)
    softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
    rows = _softcapped(_class_rows(x).matrix, softcap)
    if softcap is not None and t.is_floating_point():
        t = t.to(rows.dtype)
    loss_rows, lse, denom, hits, total = ops(backend, x).cross_entropy(rows, t, w, ignore, eps,
                                                                        z)
    loss = _reduce(loss_rows, denom, reduction, loss_shape, x.dtype, total)
    if return_stats and t.is_floating_point():
        hits = _prob_hits(rows, t)
    if return_stats and rows.requires_grad and torch.is_grad_enabled():
        # stats.lse carries logsumexp's gradient (a z-loss written by hand): the kernel's
        # value with the gradient of the (soft-capped) logits' logsumexp.
        lse = _Grafted.apply(lse, logsumexp(rows, -1, backend=backend))
    return _finish(loss, lse, denom, hits, t, ignore, reduction, loss_shape, x.dtype, z,
                   return_stats)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean", *,
             backend: str = "auto") -> Tensor:
    """Negative log-likelihood of log-probabilities, as `torch.nn.functional.nll_loss`.

    Parameters
    ----------
    input : torch.Tensor
        Log-probabilities (C,), (N, C) or (N, C, d1, ..., dk).
    target : torch.Tensor
        Class indices of any integer dtype, shape (), (N,) or (N, d1, ..., dk).
    weight, ignore_index, reduction
        As in `cross_entropy`.
    backend : {"auto", "rust", "torch"}, optional
        A gather needs no kernel: torch's operations run on every device; "rust" off the
        CPU is still an error.

    Returns
    -------
    torch.Tensor
        The loss in the input's dtype, carrying autograd.

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> mt.nll_loss(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([1]))
    tensor(0.6931)
    """
    if (weight is None and backend in _EAGER and _eager.usable(input) and input.ndim == 2
            and input.dtype in _WIDE and input.shape[1] and type(target) in _eager.PLAIN
            and target.ndim == 1 and not target.is_floating_point() and target.is_cpu
            and target.dtype is not torch.bool and target.shape[0] == input.shape[0]):
        # The common call without the general validation: the same checks, the same kernel.
        how, _, ignore = _spec.check_options(reduction, 0.0, ignore_index)
        y = _eager.checked_labels(target, input.shape[1], ignore)
        return F.nll_loss(input, y, ignore_index=ignore, reduction=how)
    x, t, w, ignore, _, reduction, loss_shape = _prepare(
        input, target, weight, ignore_index, reduction, 0.0, index_only=True)
    ops(backend, x)  # the same device rule as the other functions
    classes = x.shape[_spec.class_axis(x.ndim)]
    if backend in _EAGER and _eager.usable(x) and classes:
        y = _eager.checked_labels(t, classes, ignore)
    else:
        y = check_targets(t, classes, ignore)
    if not classes:  # no classes: every label is ignored (checked)
        loss_rows = x.new_zeros(loss_shape, dtype=torch.float64) + x.sum() * 0
        return _reduce(loss_rows.reshape(-1), loss_rows.new_zeros(()), reduction, loss_shape,
                       x.dtype)
    # torch's kernel, after mlecore's label rules; half precision computed in float32, as
    # everywhere in mlecore (torch sums bfloat16 in bfloat16).
    xc = x if x.dtype in _WIDE else x.to(torch.float32)
    wc = None if w is None else w.to(xc.dtype)
    return F.nll_loss(xc, y, wc, ignore_index=ignore, reduction=reduction).to(x.dtype)


class _PrecomputedGrad(torch.autograd.Function):
    """A loss whose gradient was already computed by the fused pass. `loss_of` recomputes the
    loss from the input differentiably, for a backward pass that builds a graph (a gradient
    penalty, `create_graph=True`): the saved gradient is a constant there."""

    @staticmethod
    def forward(ctx, input, loss, grad, loss_of):
        ctx.save_for_backward(input, grad)
        ctx.class_dim = 0 if input.ndim == 1 else 1
        ctx.loss_of = loss_of
        return loss.clone()

    @staticmethod
    def backward(ctx, g):
        x, grad = ctx.saved_tensors
        if torch.is_grad_enabled():
            with torch.enable_grad():
                (gx,) = torch.autograd.grad(ctx.loss_of(x), x, g, create_graph=True)
            return gx, None, None, None
        if g.ndim:  # reduction="none": row r's loss moves row r's gradient only
            g = g.unsqueeze(ctx.class_dim)
        return grad * g.to(grad.dtype), None, None, None


def _with_grad_transformable(x, t, w, ignore, eps, z, reduction, loss_shape, out):
    """cross_entropy_with_grad under forward-mode AD or a torch.func transform: the loss and
    the gradient as differentiable functions of the input, so that tangents and batching
    reach both."""
    if out is not None:
        raise ValueError("out= cannot be written under forward-mode AD or torch.func "
                         "transforms; leave it out")
    layout = _class_rows(x)
    loss_rows, lse, denom, _, total = TRANSFORMABLE.cross_entropy(layout.matrix, t, w, ignore,
                                                                    eps, z)
    scale = 1.0 / denom if reduction == "mean" else torch.ones_like(denom)
    grad_rows = TRANSFORMABLE.cross_entropy_backward(
        scale.expand(loss_rows.shape), layout.matrix, t.reshape(-1) if not
        t.is_floating_point() else t, w, lse, ignore, eps, z)
    return (_reduce(loss_rows, denom, reduction, loss_shape, x.dtype, total),
            layout.restore(grad_rows))


def _memory(t: Tensor) -> tuple[int, int]:
    """The bytes [lo, hi) that a tensor's elements lie in."""
    if t.numel() == 0:
        return (0, 0)
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride(), strict=True):
        step = (size - 1) * stride * t.element_size()
        lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
    return lo, hi + t.element_size()


def _overlap(a: Tensor, b: Tensor) -> bool:
    (alo, ahi), (blo, bhi) = _memory(a), _memory(b)
    return alo < bhi and blo < ahi


def _check_out(out, x: Tensor, target: Tensor, weight: Tensor | None) -> bool:
    """Validates `out=` as torch validates out= and in-place writes; True when `out` is
    the input itself (an in-place gradient)."""
    if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype \
            or out.device != x.device:
        raise ValueError(f"out must be a tensor of the input's shape {tuple(x.shape)}, "
                         f"dtype {x.dtype} and device {x.device}")
    inplace = (out.data_ptr() == x.data_ptr() and out.stride() == x.stride())
    if inplace and x.requires_grad:
        raise ValueError("out=input overwrites a tensor that requires grad")
    if out.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("cross_entropy_with_grad(): out= tensors don't support automatic "
                           "differentiation, but out requires grad")
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("Inplace update to inference tensor outside InferenceMode is not "
                           "allowed: clone it first")
    if not inplace and _overlap(out, x):
        raise ValueError("out overlaps input without being input itself; pass out=input for "
                         "an in-place gradient, or a separate tensor")
    for name, read in (("target", target), ("weight", weight)):
        # The kernel reads these while it writes out: any shared memory is refused.
        if read is not None and _overlap(out, read):
            raise ValueError(f"out overlaps {name}: the gradient would overwrite it while "
                             "the kernel reads it; pass a separate tensor")
    return inplace


def cross_entropy_with_grad(input: Tensor, target: Tensor, weight: Tensor | None = None,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0, out: Tensor | None = None, *,
                            softcap: float | None = None, lse_square_scale: float = 0.0,
                            return_stats: bool = False,
                            backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The loss and its gradient with respect to the logits from one fused pass.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing, backend
        As in `cross_entropy`.
    out : torch.Tensor, optional
        Where the gradient goes: a tensor of the input's shape, dtype and device, or the
        input itself (in place; not for an input that requires grad).
    softcap, lse_square_scale, return_stats
        As in `cross_entropy`.

    Returns
    -------
    loss : torch.Tensor or CrossEntropyStats
        As `cross_entropy`; when `input` requires grad and no `out` is given, it carries
        autograd (its backward reuses the computed gradient).
    grad : torch.Tensor
        d loss / d input (of ``loss.sum()`` for reduction="none"); `out` when given.

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> loss, grad = mt.cross_entropy_with_grad(torch.zeros(1, 2), torch.tensor([0]))
    >>> grad
    tensor([[-0.5000,  0.5000]])
    """
    x, t, w, ignore, eps, reduction, loss_shape = _prepare(
        input, target, weight, ignore_index, reduction, label_smoothing)
    softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
    if out is not None:
        _check_out(out, x, target, w)
    o = ops(backend, x)
    if o is TRANSFORMABLE:
        if softcap is not None or return_stats:
            raise ValueError("softcap and return_stats need the fused pass, which forward-mode "
                             "AD and torch.func transforms cannot enter: use cross_entropy")
        return _with_grad_transformable(x, t, w, ignore, eps, z, reduction, loss_shape, out)
    layout = _class_rows(x.detach())
    with torch.no_grad():
        rows = _softcapped(layout.matrix, softcap)
        if softcap is not None and t.is_floating_point():
            t = t.to(rows.dtype)
        capped = softcap is not None
        direct = (out is not None and out.ndim <= 2 and out.is_contiguous()
                  and out.dtype == rows.dtype)
        judged = _prob_hits(rows, t) if return_stats and t.is_floating_point() else None
        if backend != "torch" and x.device.type == "cpu":
            rows = rows.contiguous()
            target_rows = out.view(rows.shape) if direct else None
            loss_rows, lse, denom, hits, grad_rows = _rust.cross_entropy_with_grad(
                rows, t, w, ignore, eps, z, reduction, target_rows)
        else:
            loss_rows, lse, denom, hits, _ = o.cross_entropy(rows, t, w, ignore, eps, z)
            scale = 1.0 / denom if reduction == "mean" else torch.ones_like(denom)
            grad_rows = o.cross_entropy_backward(scale.expand(loss_rows.shape), rows, t, w,
                                                 lse, ignore, eps, z)
        if capped:  # through the cap: d(c·tanh(z/c))/dz = 1 − (s/c)²
            grad_rows.mul_(1 - (rows / softcap) ** 2)
        loss = _reduce(loss_rows, denom, reduction, loss_shape, x.dtype)
        grad = layout.restore(grad_rows.to(x.dtype))
        if out is not None and not (direct and grad_rows.data_ptr() == out.data_ptr()):
            out.copy_(grad)
            grad = out
        elif out is not None:
            # Rust wrote out's memory directly: tell autograd, as an in-place op would.
            torch.autograd.graph.increment_version(out)
            grad = out
    if x.requires_grad and out is None and torch.is_grad_enabled():
        def loss_of(xi):
            return cross_entropy(xi, target, weight, ignore_index, reduction, label_smoothing,
                                 softcap=softcap, lse_square_scale=z, backend=backend)

        loss = _PrecomputedGrad.apply(x, loss, grad, loss_of)
    hits = judged if judged is not None else hits
    return _finish(loss, lse, denom, hits, t, ignore, reduction, loss_shape, x.dtype, z,
                   return_stats), grad
