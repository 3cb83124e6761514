"""The fused linear cross-entropy in the torch dispatcher: `torch.ops.mlecore.linear_cross_entropy`
(and `torch_linear_cross_entropy`, torch's operations on every device) with its backward.

For reduction "mean" and "sum" the forward pass computes the gradients it is asked for in
the same chunks (three matrix products per chunk, as the bare computation needs), and the
backward pass scales them by the incoming gradient. For "none" the incoming gradient differs
per row, so the backward operator runs the chunks again (a fourth product), as torch's
chunked path does. A backward pass that builds a graph (`create_graph=True`) differentiates
the reference composition instead, so that higher derivatives are right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _linear_kernels as K
from . import _reference as R
from ._eager import PLAIN
from ._functional import cross_entropy


@dataclass(frozen=True)
class LinearOps:
    forward: object
    backward: object


def _define(prefix: str, rust: bool) -> LinearOps:
    ns = f"mlecore::{prefix}"

    @torch.library.custom_op(ns + "linear_cross_entropy", mutates_args=())
    def forward(input: Tensor, linear_weight: Tensor, target: Tensor,
                linear_bias: Tensor | None, weight: Tensor | None, ignore_index: int,
                label_smoothing: float, softcap: float | None, lse_square_scale: float,
                chunk_size: int, reduction: str, need_input: bool, need_weight: bool,
                need_bias: bool, stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                       Tensor, Tensor, Tensor]:
        """(loss in float64: reduced, or per row for "none"; per-row log-sum-exp; the mean's
        denominator; per-row hits when `stats`; dx, dw, db of the reduced loss where asked
        for, else empty)."""
        return K.torch_ops(input, linear_weight, target, linear_bias, weight, ignore_index,
                           label_smoothing, softcap, lse_square_scale, chunk_size, reduction,
                           (need_input, need_weight, need_bias and linear_bias is not None),
                           stats)

    @torch.library.custom_op(ns + "linear_cross_entropy_backward", mutates_args=())
    def backward(grad_rows: Tensor, input: Tensor, linear_weight: Tensor, target: Tensor,
                 linear_bias: Tensor | None, weight: Tensor | None, ignore_index: int,
                 label_smoothing: float, softcap: float | None, lse_square_scale: float,
                 chunk_size: int, need_input: bool, need_weight: bool,
                 need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(dx, dw, db) of Σ grad_rows·loss_rows, recomputed chunk by chunk."""
        return K.torch_ops(input, linear_weight, target, linear_bias, weight, ignore_index,
                           label_smoothing, softcap, lse_square_scale, chunk_size, "none",
                           (need_input, need_weight, need_bias and linear_bias is not None),
                           False, grad_rows)[4:]

    def fake_grads(input, linear_weight, linear_bias, needs):
        like = (input, linear_weight, linear_bias)
        return tuple(t.new_empty(t.shape) if need and t is not None else
                     input.new_empty(K._EMPTY) for t, need in zip(like, needs, strict=True))

    @forward.register_fake
    def _(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
          softcap, lse_square_scale, chunk_size, reduction, need_input, need_weight,
          need_bias, stats):
        n = input.shape[0]
        f64 = torch.float64
        loss = input.new_empty((n,) if reduction == "none" else (), dtype=f64)
        return (loss, input.new_empty(n, dtype=R.compute_dtype(input.dtype)),
                input.new_empty((), dtype=f64),
                input.new_empty(n if stats else 0, dtype=torch.uint8),
                *fake_grads(input, linear_weight, linear_bias,
                            (need_input, need_weight, need_bias)))

    @backward.register_fake
    def _(grad_rows, input, linear_weight, target, linear_bias, weight, ignore_index,
          label_smoothing, softcap, lse_square_scale, chunk_size, need_input, need_weight,
          need_bias):
        return fake_grads(input, linear_weight, linear_bias,
                          (need_input, need_weight, need_bias))

    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output, forward, backward)

    def grad_fn(ctx, g, *_):
        return gradients(ctx, g)

    forward.register_autograd(grad_fn, setup_context=setup)
    if rust:
        forward.register_kernel("cpu")(rust_forward)
        backward.register_kernel("cpu")(rust_backward)
    return LinearOps(forward, backward)


def rust_forward(x, lw, t, b, w, ig, eps, cap, z, chunk, red, nx, nw, nb, st):
    """The forward operator's CPU kernel (and the eager path's forward pass)."""
    return K.rust(x, lw, t, b, w, ig, eps, cap, z, chunk, red, (nx, nw, nb and b is not None),
                  st)


def rust_backward(g, x, lw, t, b, w, ig, eps, cap, z, chunk, nx, nw, nb):
    """The backward operator's CPU kernel (and the eager path's recomputing pass)."""
    return K.rust(x, lw, t, b, w, ig, eps, cap, z, chunk, "none", (nx, nw, nb and b is not None),
                  False, g)[4:]


def setup_context(ctx, inputs, output, forward, backward):
    """What the backward pass needs, for the operator's autograd and the eager path's
    Function alike; `forward` and `backward` compute a pass again (operators, or the CPU
    functions behind them)."""
    (x, lw, target, bias, weight, ignore, eps, softcap, z, chunk, reduction,
     *_needs, _stats) = inputs
    _, lse, denom, hits, dx, dw, db = output
    ctx.mark_non_differentiable(lse, denom, hits, dx, dw, db)
    ctx.reduction = reduction
    ctx.options = (ignore, eps, softcap, z, chunk)
    ctx.has_bias = bias is not None
    ctx.passes = (forward, backward)
    # The inputs are saved by reference (no copy): a recomputing backward reads them.
    # Eagerly, the precomputed gradients are handed over to the first backward pass, which
    # scales them in place and gives them away (autograd then keeps them as the .grad
    # without a copy); a second pass (retain_graph) computes them again exactly as the
    # forward pass did, then scales them the same way, so every pass gives the same bits.
    # Traced by torch.compile, state cannot change between passes: they are saved and
    # scaled.
    ctx.handover = not torch.compiler.is_compiling()
    ctx.grads = [dx, dw, db] if ctx.handover else None
    saved = () if ctx.handover else (dx, dw, db)
    ctx.save_for_backward(x, lw, target, bias, weight, denom, *saved)


def gradients(ctx, g):
    """The backward pass of `setup_context`'s call: the gradients to (x, lw, target, bias,
    and the operator's other arguments)."""
    x, lw, target, bias, weight, denom, *saved = ctx.saved_tensors
    forward, backward = ctx.passes
    needs = ctx.needs_input_grad
    wanted = (needs[0], needs[1], needs[3] and ctx.has_bias)
    if torch.is_grad_enabled():
        dx, dw, db = _differentiated(reference_loss, g, x, lw, target, bias, weight,
                                     ctx.reduction, ctx.options, wanted)
    elif ctx.reduction == "none":
        dx, dw, db = backward(g, x, lw, target, bias, weight, *ctx.options, *wanted)
    elif ctx.handover:
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second pass: the forward pass's gradients, computed again
            grads = forward(x, lw, target, bias, weight, *ctx.options, ctx.reduction,
                            *wanted, False)[4:]
        dx, dw, db = (_scaled_in_place(t, g) if w else None
                      for t, w in zip(grads, wanted, strict=True))
        del grads
    else:  # precomputed for an incoming gradient of 1
        dx, dw, db = (t * g.to(t.dtype) if w else None
                      for t, w in zip(saved, wanted, strict=True))
    grads = [t if w else None for t, w in zip((dx, dw, db), wanted, strict=True)]
    return grads[0], grads[1], None, grads[2], *[None] * 11


def reference_loss(x, lw, target, bias, weight, reduction, options):
    """The loss as torch's reference composition computes it (F.linear, then cross-entropy),
    differentiable to every order; the op's float64 loss. `options` is (ignore_index, ε,
    softcap, z, chunk)."""
    ignore, eps, softcap, z, _ = options
    logits = torch.nn.functional.linear(x.to(R.compute_dtype(x.dtype)),
                                        lw.to(R.compute_dtype(x.dtype)),
                                        None if bias is None else bias.to(
                                            R.compute_dtype(x.dtype)))
    return cross_entropy(logits, target, weight, ignore, reduction, eps, softcap=softcap,
                         lse_square_scale=z).to(torch.float64)


def _scaled_in_place(t: Tensor, g: Tensor) -> Tensor:
    """t·g, in t's memory (t is a gradient that nothing else refers to); out of place for a
    batched `g` (`is_grads_batched`, vmap), whose batch t does not have."""
    f = torch._C._functorch
    if f.is_functorch_wrapped_tensor(g) or f.is_legacy_batchedtensor(g):
        return t * g.to(t.dtype)
    if g.device.type != "cpu" or float(g) != 1.0:
        t.mul_(g.to(t.dtype))
    return t


def _differentiated(loss_of, g, x, lw, target, bias, weight, reduction, options, wanted):
    """Gradients of the reference loss as a graph over the saved inputs (for a higher
    derivative)."""
    with torch.enable_grad():
        loss = loss_of(x, lw, target, bias, weight, reduction, options)
        asked = [t for t, w in zip((x, lw, bias), wanted, strict=True) if w]
        found = iter(torch.autograd.grad(loss, asked, g, create_graph=True))
    return tuple(next(found) if w else None for w in wanted)


RUST = _define("", rust=True)
TORCH = _define("torch_", rust=False)


def eager(x, lw, t, bias, weight, ignore, eps, softcap, z, chunk, reduction, stats):
    """The eager path (`_eager.py`) of the forward operator: its result on validated (N, D)
    input of plain CPU tensors (`_eager.usable`), or None where the operator must run."""
    if not (type(lw) in PLAIN and lw.is_cpu and (bias is None or type(bias) in PLAIN)
            and (weight is None or type(weight) in PLAIN) and type(t) in PLAIN):
        return None
    grad = torch.is_grad_enabled() and reduction != "none"
    needs = (grad and x.requires_grad, grad and lw.requires_grad,
             grad and bias is not None and bias.requires_grad)
    args = (x, lw, t, bias, weight, ignore, eps, softcap, z, chunk, reduction, *needs, stats)
    if torch.is_grad_enabled() and (x.requires_grad or lw.requires_grad or (
            bias is not None and bias.requires_grad)):
        return _Linear.apply(*args)
    return rust_forward(*args)


class _Linear(torch.autograd.Function):
    """The linear cross-entropy operator's autograd on its CPU kernels, without the
    dispatcher: the same setup and backward functions (`_linear_ops`)."""

    @staticmethod
    def forward(ctx, *inputs):
        out = rust_forward(*inputs)
        setup_context(ctx, inputs, out, rust_forward, rust_backward)
        return out

    @staticmethod
    def backward(ctx, g, *_):
        return gradients(ctx, g)
