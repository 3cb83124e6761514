"""The rules both front-ends follow: options, shapes, labels, reductions and their errors.

This module imports neither numpy nor torch. The numpy API (`_special`, `_losses`) and the
torch API (`mlecore.torch`) validate through it, so every rule has one definition and every
error one wording. The Rust kernels keep their own bounds check, for memory safety; its
report is reworded here too.
"""

from __future__ import annotations

import math
import operator
import sys
from typing import Any, NamedTuple

#: Values of every function's `backend=`.
BACKENDS = ("auto", "rust", "torch")
#: Values of `reduction=`, torch's names.
REDUCTIONS = ("none", "mean", "sum")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
#: float32's normal range, [2^-126, (2 − 2^-23)·2^127]: every float16, bfloat16 and float32
#: input is capped in float32, where c outside it is inf or loses its digits (and
#: c·tanh(z/c) turns NaN).
SOFTCAP_RANGE = (2.0**-126, (2 - 2.0**-23) * 2.0**127)


def is_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch: a tensor can only exist if the
    caller imported torch already."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_dask(x) -> bool:
    """True for a Dask array, without importing dask (the caller imported it already)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def check_backend(backend) -> str:
    """`backend`, or ValueError when it is not one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def numpy_backend(backend) -> None:
    """The check for array (not tensor) input: every backend but "torch" runs Rust."""
    if check_backend(backend) == "torch":
        raise ValueError("backend='torch' needs torch tensors; numpy input always runs in Rust")


def check_options(reduction, label_smoothing=0.0, ignore_index=-100) -> tuple[str, float, int]:
    """Validated (reduction, label_smoothing, ignore_index), with torch's names and rules.

    torch treats a negative `label_smoothing` as 0; mlecore refuses it.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float, got {label_smoothing!r}") from None
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return reduction, eps, check_ignore_index(ignore_index)


def check_loss_options(softcap=None, lse_square_scale=0.0) -> tuple[float | None, float]:
    """Validated (softcap, lse_square_scale): the options fused losses offer.

    `softcap` c > 0 makes the logits c·tanh(z/c) before the loss (Gemma 2's soft-capping);
    `lse_square_scale` s ≥ 0 adds s·lse² to each counted row's loss (PaLM's z-loss).

    The cap must lie in float32's normal range (`SOFTCAP_RANGE`) whatever the dtype: one
    rule for every dtype and path, checked before any input is read (Dask's included). A
    cap beyond 3.4e38 caps nothing and one below 1.2e-38 leaves no logits, so float64
    loses no useful cap by it.
    """
    if softcap is not None:
        try:
            cap = float(softcap)
        except (TypeError, ValueError):
            raise TypeError(f"softcap must be a float or None, got {softcap!r}") from None
        if not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"softcap must be a finite number > 0, got {softcap}")
        low, high = SOFTCAP_RANGE
        if not low <= cap <= high:
            raise ValueError(f"softcap must be in [{low:.7g}, {high:.7g}] (float32's normal "
                             f"range, for every dtype), got {softcap}")
        softcap = cap
    try:
        z = float(lse_square_scale)
    except (TypeError, ValueError):
        raise TypeError(f"lse_square_scale must be a float, got {lse_square_scale!r}") from None
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"lse_square_scale must be a finite number ≥ 0, got {lse_square_scale}")
    return softcap, z


def check_chunk_size(chunk_size) -> int | None:
    """`chunk_size` (rows per chunk of a fused linear loss) as an int ≥ 1, or None."""
    if chunk_size is None:
        return None
    try:
        n = operator.index(chunk_size)
    except TypeError:
        raise TypeError(f"chunk_size must be an int or None, got {chunk_size!r}") from None
    if n < 1:
        raise ValueError(f"chunk_size must be at least 1, got {n}")
    return n


class CrossEntropyStats(NamedTuple):
    """What a loss with ``return_stats=True`` returns, computed in the same pass.

    Attributes
    ----------
    loss
        The loss, as without ``return_stats`` (z-loss included).
    z_loss
        Its z-loss part, s·lse² over the counted rows, reduced as the loss.
    lse
        Each element's log-sum-exp over the classes (of the soft-capped logits), in the
        loss's per-element shape: for perplexity, distillation, or a z-loss elsewhere.
    accuracy
        The fraction of counted rows whose target class holds the row's maximum logit (the
        most probable class of a probability target); NaN when no row counts.
    """

    loss: Any
    z_loss: Any
    lse: Any
    accuracy: Any


def check_ignore_index(ignore_index) -> int:
    """`ignore_index` as a Python int that fits in int64 (torch's type for it)."""
    try:
        ignore = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}") from None
    if not _I64_MIN <= ignore <= _I64_MAX:
        raise ValueError(f"ignore_index must fit in int64, got {ignore}")
    return ignore


def check_dim(dim, ndim: int) -> tuple[int, ...]:
    """`dim` (None, an int, or a sequence of ints; anything with ``__index__``) as sorted,
    distinct, non-negative axes of an `ndim`-dimensional input (a 0-d one counts as 1-d)."""
    nd = max(ndim, 1)
    if dim is None:
        return tuple(range(nd))
    try:
        dims = (operator.index(dim),)
    except TypeError:
        try:
            dims = tuple([operator.index(d) for d in dim])
        except TypeError:
            raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}") from None
    out = []
    for d in dims:
        if not -nd <= d < nd:
            raise IndexError(f"Dimension out of range (expected to be in range of "
                             f"[{-nd}, {nd - 1}], but got {d})")
        out.append(d % nd)
    if len(set(out)) != len(out):
        raise ValueError(f"dim {dim} repeats a dimension")
    return tuple(sorted(out))


def class_layout(input_shape, target_shape, is_index: bool) -> tuple[int, tuple[int, ...]]:
    """The class count and the shape of per-element losses; ValueError on a mismatch.

    Classes are axis 1 of (N, C, d1, ..., dk) input and axis 0 of unbatched (C,) input.
    """
    input_shape, target_shape = tuple(input_shape), tuple(target_shape)
    if len(input_shape) == 0:
        raise ValueError("input must have a class axis: expected shape (C,), (N, C) or "
                         "(N, C, d1, ..., dk), got a 0-d input")
    n_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    loss_shape = () if len(input_shape) == 1 else (input_shape[0],) + input_shape[2:]
    if is_index and target_shape != loss_shape:
        raise ValueError(f"target of class indices must have shape {loss_shape} for input of "
                         f"shape {input_shape}, got {target_shape}")
    if not is_index and target_shape != input_shape:
        raise ValueError(f"a float target holds class probabilities and must have the input's "
                         f"shape {input_shape}, got {target_shape}")
    return n_classes, loss_shape


def class_axis(ndim: int) -> int:
    """The class axis of an input with `ndim` dimensions: 0 when unbatched, else 1."""
    return 0 if ndim == 1 else 1


def target_is_index(kind: str, dtype) -> bool:
    """True for class indices, False for probabilities; TypeError for anything else.

    `kind` is numpy's dtype kind ("i", "u", "f", ...); `dtype` is named in the error.
    """
    if kind in "iu":
        return True
    if kind == "f":
        return False
    raise TypeError(f"target must hold class indices (an integer dtype) or class "
                    f"probabilities (a float dtype), got dtype {dtype}")


def index_only(is_index: bool, dtype) -> None:
    """nll_loss takes class indices only."""
    if not is_index:
        raise TypeError(f"nll_loss takes class indices (an integer dtype), got {dtype}")


def weight_shape_error(n_classes: int, got) -> ValueError:
    """The one wording of a class-weight vector of the wrong shape."""
    return ValueError(f"weight must have shape ({n_classes},), one per class, got {got}")


def label_error(position: int, value: int, target_shape, n_classes: int,
                ignore_index: int) -> IndexError:
    """The error for an out-of-range class index at flat `position` of a target of
    `target_shape`: torch's first sentence, then where it is and what was expected."""
    shape = tuple(target_shape)
    if shape == ():
        where = "target"
    else:
        idx = []
        for n in reversed(shape):
            position, i = divmod(position, n)
            idx.append(i)
        where = f"target[{', '.join(str(i) for i in reversed(idx))}]"
    return IndexError(f"Target {value} is out of bounds: {where} = {value}, expected a class "
                      f"index in [0, {n_classes}) or ignore_index ({ignore_index})")


def true_divide(a: float, b: float) -> float:
    """a / b of Python floats as float64 arrays divide (IEEE: a zero divisor gives ±inf or
    NaN, where Python raises)."""
    if b:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def reduce_loss(per_element, total, denom, reduction: str, loss_shape):
    """torch's reductions of per-element losses: "none" gives them in `loss_shape`, "sum" the
    `total`, "mean" `total / denom`, where `denom` is the summed weights of the non-ignored
    targets for class indices and the element count for probabilities (torch's weighted
    mean). Works on numpy values and torch tensors alike; the caller casts the result."""
    if reduction == "none":
        return per_element.reshape(loss_shape)
    if reduction == "sum":
        return total
    return total / denom

