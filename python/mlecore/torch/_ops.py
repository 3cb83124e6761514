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
        return lse_grad(grad, x, out, logsumexp_backward)

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
        return log_softmax_grad(grad, out, log_softmax_backward)

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
        return softmax_grad(grad, out, softmax_backward)

    softmax.register_autograd(sm_backward, setup_context=ls_setup)

    # --- cross-entropy over rows -----------------------------------------------------------
    @torch.library.custom_op(ns + "cross_entropy", mutates_args=())
    def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                      label_smoothing: float,
                      lse_square_scale: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(per-row losses in float64, per-row log-sum-exp, the mean's denominator, per-row
        hits: whether the row's class holds its maximum, the losses' float64 sum)."""
        _check_labels(target, input.shape[-1], ignore_index)
        return _with_total(*R.cross_entropy_rows(input, _flat(target), weight, ignore_index,
                                                 label_smoothing, lse_square_scale))

    @torch.library.custom_op(ns + "cross_entropy_backward", mutates_args=())
    def cross_entropy_backward(grad_rows: Tensor, input: Tensor, target: Tensor,
                               weight: Tensor | None, lse: Tensor, ignore_index: int,
                               label_smoothing: float, lse_square_scale: float) -> Tensor:
        _check_labels(target, input.shape[-1], ignore_index)
        return R.cross_entropy_backward(grad_rows, input, _flat(target), weight, lse,
                                        ignore_index, label_smoothing,
                                        lse_square_scale).contiguous()

    @cross_entropy.register_fake
    def _(input, target, weight, ignore_index, label_smoothing, lse_square_scale):
        rows = input.shape[0]
        return (input.new_empty(rows, dtype=torch.float64),
                input.new_empty(rows, dtype=R.compute_dtype(input.dtype)),
                input.new_empty((), dtype=torch.float64),
                input.new_empty(rows, dtype=torch.uint8),
                input.new_empty((), dtype=torch.float64))

    @cross_entropy_backward.register_fake
    def _(grad_rows, input, target, weight, lse, ignore_index, label_smoothing,
          lse_square_scale):
        return input.new_empty(input.shape)

    def ce_setup(ctx, inputs, output):
        input, target, weight, ignore_index, eps, z = inputs
        _, lse, denom, hits, _ = output
        ctx.mark_non_differentiable(lse, denom, hits)
        ctx.save_for_backward(input, target, weight, lse)
        ctx.options = (ignore_index, eps, z)

    def ce_backward(ctx, grad_rows, _grad_lse, _grad_denom, _grad_hits, grad_total):
        x, target, weight, lse = ctx.saved_tensors
        # The loss of a reduction is the total's; of "none", the rows'.
        if grad_rows is None:
            grad_rows = grad_total.expand(x.shape[0])
        elif grad_total is not None:
            grad_rows = grad_rows + grad_total
        return ce_grads(ctx, grad_rows, x, target, weight, lse, *ctx.options,
                        cross_entropy_backward)

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


def _flat(target: Tensor) -> Tensor:
    """Class indices as one per row; probabilities as they are."""
    return target if target.is_floating_point() else target.reshape(-1)


def _with_total(loss, lse, denom, hits):
    return loss, lse, denom, hits, loss.sum()


def ce_grads(ctx, grad_rows, x, target, weight, lse, ignore_index, eps, z, kernel):
    """The gradients of a cross-entropy call to its logits and (probability) target, given
    the per-row gradients `grad_rows`: `kernel` (an operator or a function of its signature)
    computes the logits' own, unless a higher derivative is wanted (grad mode on inside the
    backward), which needs the formula in differentiable torch operations."""
    t = _flat(target)
    if torch.is_grad_enabled():
        # A higher derivative: the log-sum-exp must depend on x in the graph.
        lse = R.logsumexp_rows(x.to(R.compute_dtype(x.dtype)))
        gx = R.cross_entropy_backward(grad_rows, x, t, weight, lse, ignore_index, eps, z)
    else:
        gx = kernel(grad_rows, x, target, weight, lse, ignore_index, eps, z)
    gt = None
    if target.is_floating_point() and ctx.needs_input_grad[1]:
        gt = R.cross_entropy_target_grad(grad_rows, x, target, weight, lse, eps)
    return gx, gt, None, None, None, None


# The backward formulas, shared by the operators' autograd and the eager path's Functions
# (`_eager.py`), so both compute the same numbers. Each takes the backward `kernel` to run
# when no higher derivative is wanted (an operator, or the CPU function behind it); with
# grad mode on inside the backward, it stays in differentiable torch operations.

def lse_grad(grad: Tensor, x: Tensor, out: Tensor, kernel) -> Tensor:
    """d logsumexp(x) / dx · grad = grad·softmax(x), rows of (R, C)."""
    if torch.is_grad_enabled():  # a higher derivative: stay differentiable
        p = R.softmax_scale(x.to(R.compute_dtype(x.dtype)), out.to(R.compute_dtype(x.dtype)))
        return (grad.unsqueeze(-1) * p).to(x.dtype)
    return kernel(grad, x, out)


def log_softmax_grad(grad: Tensor, out: Tensor, kernel) -> Tensor:
    """grad − exp(out)·Σ grad over each row, from the log-softmax `out`."""
    if torch.is_grad_enabled():
        return _log_softmax_grad(grad, out)
    return kernel(grad, out)


def softmax_grad(grad: Tensor, out: Tensor, kernel) -> Tensor:
    """out·(grad − Σ grad·out) over each row, from the softmax `out`."""
    if torch.is_grad_enabled():
        return R.softmax_grad(grad, out)
    return kernel(grad, out)


def _log_softmax_grad(grad: Tensor, out: Tensor) -> Tensor:
    if out.dtype in (torch.float32, torch.float64) and grad.dtype == out.dtype:
        # torch's own fused kernel (one pass; differentiable, for double backward).
        return torch._log_softmax_backward_data(grad, out, -1, out.dtype)
    return grad - torch.exp(out) * grad.sum(-1, keepdim=True)


@torch.library.custom_op("mlecore::check_targets", mutates_args=())
def check_targets(target: Tensor, classes: int, ignore_index: int) -> Tensor:
    """Class indices as int64 (ignored ones as they are), after the range check: inside an
    operator, so the check is no Python branch on tensor data under torch.compile."""
    y = R.check_targets(target, classes, ignore_index)[0]
    # An operator's output never aliases its input (int64 labels come back as they are).
    return y.clone(memory_format=torch.contiguous_format) if y is target else y.contiguous()


@check_targets.register_fake
def _(target, classes, ignore_index):
    return target.new_empty(target.shape, dtype=torch.int64)


RUST = _define("", rust=True)
TORCH = _define("torch_", rust=False)


def _checked_rows(input, target, weight, ignore_index, label_smoothing, lse_square_scale):
    # Under vmap a batched target (wrapped by any transform level) cannot be tested on the
    # host; torch's gather then reports a bad label itself.
    if not torch._C._functorch.is_functorch_wrapped_tensor(target):
        _check_labels(target, input.shape[-1], ignore_index)
    return _with_total(*R.cross_entropy_rows(input, _flat(target), weight, ignore_index,
                                             label_smoothing, lse_square_scale))


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
