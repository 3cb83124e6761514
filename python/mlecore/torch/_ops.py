"""mlecore's operators in the torch dispatcher (`torch.ops.mlecore.*`).

Two sets with one definition: `logsumexp`, `log_softmax`, `cross_entropy` (and their
`*_backward` operators) run the Rust kernels on CPU and torch's own operations on every other
device; `torch_logsumexp`, `torch_log_softmax`, `torch_cross_entropy` run torch's operations
everywhere, which is what `backend="torch"` selects (and how CPU-only CI tests the CUDA code).

Each operator works on rows: (R, C) in, one value per row (or an (R, C) result) out. It has a
fake implementation, so `torch.compile(fullgraph=True)` traces it, and autograd registered
through torch.library whose backward is itself an operator. When a higher derivative is asked
for (grad mode on inside the backward), the backward is written in differentiable torch
operations instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._spec import check_backend
from . import _reference as R
from . import _rust


def _check_labels(target: Tensor, classes: int, ignore_index: int):
    if not target.is_floating_point():
        R.check_targets(target, classes, ignore_index)


@dataclass(frozen=True)
class OpSet:
    """One backend's operators (OpOverloadPackets under torch.ops.mlecore)."""

    logsumexp: object
    logsumexp_backward: object
    log_softmax: object
    log_softmax_backward: object
    softmax: object
    softmax_backward: object
    cross_entropy: object
    cross_entropy_backward: object


def _define(prefix: str, rust: bool) -> OpSet:
    ns = f"mlecore::{prefix}"

    # --- logsumexp over the last axis of (R, C) --------------------------------------------
    @torch.library.custom_op(ns + "logsumexp", mutates_args=())
    def logsumexp(input: Tensor) -> Tensor:
        return R.logsumexp_rows(input)

    @torch.library.custom_op(ns + "logsumexp_backward", mutates_args=())
    def logsumexp_backward(grad: Tensor, input: Tensor, result: Tensor) -> Tensor:
        xc = input.to(R.compute_dtype(input.dtype))
        g = grad.to(xc.dtype).unsqueeze(-1) * R.softmax_scale(xc, result.to(xc.dtype))
        return g.to(input.dtype).contiguous()

    @logsumexp.register_fake
    def _(input):
        return input.new_empty(input.shape[:-1])

    # Outputs of an input's shape are always contiguous, whatever the input's strides.
    @logsumexp_backward.register_fake
    def _(grad, input, result):
        return input.new_empty(input.shape)

    def lse_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    def lse_backward(ctx, grad):
        x, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # a higher derivative: stay differentiable
            p = R.softmax_scale(x.to(R.compute_dtype(x.dtype)), out.to(R.compute_dtype(x.dtype)))
            return (grad.unsqueeze(-1) * p).to(x.dtype)
        return logsumexp_backward(grad, x, out)

    logsumexp.register_autograd(lse_backward, setup_context=lse_setup)

    # --- log_softmax over the last axis of (R, C) ------------------------------------------
    @torch.library.custom_op(ns + "log_softmax", mutates_args=())
    def log_softmax(input: Tensor) -> Tensor:
        return R.log_softmax_rows(input).contiguous()

    @torch.library.custom_op(ns + "log_softmax_backward", mutates_args=())
    def log_softmax_backward(grad: Tensor, result: Tensor) -> Tensor:
        return _log_softmax_grad(grad, result).contiguous()

    @log_softmax.register_fake
    def _(input):
        return input.new_empty(input.shape)

    @log_softmax_backward.register_fake
    def _(grad, result):
        return result.new_empty(result.shape)

    def ls_setup(ctx, inputs, output):
        ctx.save_for_backward(output)

    def ls_backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _log_softmax_grad(grad, out)
        return log_softmax_backward(grad, out)

    log_softmax.register_autograd(ls_backward, setup_context=ls_setup)

    # --- softmax over the last axis of (R, C): its own kernel, so that float16 and bfloat16
    # results are rounded once (the exponential of a rounded log-softmax lost 3 bits) --------
    @torch.library.custom_op(ns + "softmax", mutates_args=())
    def softmax(input: Tensor) -> Tensor:
        return R.softmax_rows(input).contiguous()

    @torch.library.custom_op(ns + "softmax_backward", mutates_args=())
    def softmax_backward(grad: Tensor, result: Tensor) -> Tensor:
        return R.softmax_grad(grad, result).contiguous()

    @softmax.register_fake
    def _(input):
        return input.new_empty(input.shape)

    @softmax_backward.register_fake
    def _(grad, result):
        return result.new_empty(result.shape)

    def sm_backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return R.softmax_grad(grad, out)
        return softmax_backward(grad, out)

    softmax.register_autograd(sm_backward, setup_context=ls_setup)

    # --- cross-entropy over rows -----------------------------------------------------------
    @torch.library.custom_op(ns + "cross_entropy", mutates_args=())
    def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                      label_smoothing: float,
                      lse_square_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(per-row losses in float64, per-row log-sum-exp, the mean's denominator, per-row
        hits: whether the row's class holds its maximum)."""
        _check_labels(target, input.shape[-1], ignore_index)
        t = target if target.is_floating_point() else target.reshape(-1)
        return R.cross_entropy_rows(input, t, weight, ignore_index, label_smoothing,
                                    lse_square_scale)

    @torch.library.custom_op(ns + "cross_entropy_backward", mutates_args=())
    def cross_entropy_backward(grad_rows: Tensor, input: Tensor, target: Tensor,
                               weight: Tensor | None, lse: Tensor, ignore_index: int,
                               label_smoothing: float, lse_square_scale: float) -> Tensor:
        _check_labels(target, input.shape[-1], ignore_index)
        t = target if target.is_floating_point() else target.reshape(-1)
        return R.cross_entropy_backward(grad_rows, input, t, weight, lse, ignore_index,
                                        label_smoothing, lse_square_scale).contiguous()

    @cross_entropy.register_fake
    def _(input, target, weight, ignore_index, label_smoothing, lse_square_scale):
        rows = input.shape[0]
        return (input.new_empty(rows, dtype=torch.float64),
                input.new_empty(rows, dtype=R.compute_dtype(input.dtype)),
                input.new_empty((), dtype=torch.float64),
                input.new_empty(rows, dtype=torch.uint8))

    @cross_entropy_backward.register_fake
    def _(grad_rows, input, target, weight, lse, ignore_index, label_smoothing,
          lse_square_scale):
        return input.new_empty(input.shape)

    def ce_setup(ctx, inputs, output):
        input, target, weight, ignore_index, eps, z = inputs
        _, lse, denom, hits = output
        ctx.mark_non_differentiable(lse, denom, hits)
        ctx.save_for_backward(input, target, weight, lse)
        ctx.options = (ignore_index, eps, z)

    def ce_backward(ctx, grad_rows, _grad_lse, _grad_denom, _grad_hits):
        x, target, weight, lse = ctx.saved_tensors
        ignore_index, eps, z = ctx.options
        t = target if target.is_floating_point() else target.reshape(-1)
        if torch.is_grad_enabled():
            # A higher derivative: the log-sum-exp must depend on x in the graph.
            lse = R.logsumexp_rows(x.to(R.compute_dtype(x.dtype)))
            gx = R.cross_entropy_backward(grad_rows, x, t, weight, lse, ignore_index, eps, z)
        else:
            gx = cross_entropy_backward(grad_rows, x, target, weight, lse, ignore_index, eps, z)
        gt = None
        if target.is_floating_point() and ctx.needs_input_grad[1]:
            gt = R.cross_entropy_target_grad(grad_rows, x, target, weight, lse, eps)
        return gx, gt, None, None, None, None

    cross_entropy.register_autograd(ce_backward, setup_context=ce_setup)

    if rust:
        logsumexp.register_kernel("cpu")(_rust.logsumexp)
        logsumexp_backward.register_kernel("cpu")(_rust.logsumexp_backward)
        log_softmax.register_kernel("cpu")(_rust.log_softmax)
        softmax.register_kernel("cpu")(_rust.softmax)
        cross_entropy.register_kernel("cpu")(_rust.cross_entropy)
        cross_entropy_backward.register_kernel("cpu")(_rust.cross_entropy_backward)

    return OpSet(logsumexp, logsumexp_backward, log_softmax, log_softmax_backward, softmax,
                 softmax_backward, cross_entropy, cross_entropy_backward)


def _log_softmax_grad(grad: Tensor, out: Tensor) -> Tensor:
    return grad - torch.exp(out) * grad.sum(-1, keepdim=True)


@torch.library.custom_op("mlecore::check_targets", mutates_args=())
def check_targets(target: Tensor, classes: int, ignore_index: int) -> Tensor:
    """Class indices as int64 with ignored ones set to 0, after the range check: inside an
    operator, so the check is no Python branch on tensor data under torch.compile."""
    y, valid = R.check_targets(target, classes, ignore_index)
    return torch.where(valid, y, 0).contiguous()


@check_targets.register_fake
def _(target, classes, ignore_index):
    return target.new_empty(target.shape, dtype=torch.int64)


RUST = _define("", rust=True)
TORCH = _define("torch_", rust=False)


def _checked_rows(input, target, weight, ignore_index, label_smoothing, lse_square_scale):
    # Under vmap a batched target cannot be tested on the host; torch's gather then reports a
    # bad label itself.
    if not torch._C._functorch.is_batchedtensor(target):
        _check_labels(target, input.shape[-1], ignore_index)
    t = target if target.is_floating_point() else target.reshape(-1)
    return R.cross_entropy_rows(input, t, weight, ignore_index, label_smoothing,
                                lse_square_scale)


#: The same operations as plain differentiable torch functions, for forward-mode AD and the
#: torch.func transforms (jvp, jacfwd, hessian, vmap, ...), which custom operators do not
#: support: torch derives every rule from the operations themselves.
TRANSFORMABLE = OpSet(
    logsumexp=R.logsumexp_rows,
    logsumexp_backward=None,
    log_softmax=R.log_softmax_rows,
    log_softmax_backward=None,
    softmax=R.softmax_rows,
    softmax_backward=None,
    cross_entropy=_checked_rows,
    cross_entropy_backward=R.cross_entropy_backward,
)


def _transformed(x: Tensor) -> bool:
    """True when `x` carries a forward-mode tangent or is wrapped by a torch.func transform."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return torch.autograd.forward_ad.unpack_dual(x).tangent is not None


def ops(backend: str, x: Tensor) -> OpSet:
    """The operators for `backend` ("auto", "rust", "torch") on `x`'s device; plain torch
    functions when `x` is under forward-mode AD or a torch.func transform."""
    device = x.device
    if check_backend(backend) == "rust" and device.type != "cpu":
        raise ValueError(f"backend='rust' runs on CPU tensors only, got a tensor on "
                         f"{device}; the Rust kernels cannot read device memory (use "
                         "backend='auto' or 'torch', which run torch's own operations there)")
    if _transformed(x):
        return TRANSFORMABLE
    return TORCH if backend == "torch" else RUST
