"""The compiled kernels (Rust, PyO3). The package validates and lays out every argument
(`mlecore._arrays`, `mlecore._kernels`, `mlecore.torch._rust`); `make test` checks these
stubs against the compiled module (mypy's stubtest).

_Memory crosses in one form for both front-ends (`_Memory`): a C-contiguous, aligned numpy
array, or a torch tensor's ``(data_ptr, numel, dtype code, tensor)`` (codes in
`mlecore.torch._rust.CODES`; the tuple holds the tensor, keeping its memory alive).
"""

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "__version__", "check_labels", "cross_entropy_backward_rows", "cross_entropy_grad_rows",
    "cross_entropy_rows", "detected_simd_tier", "follow_threads", "get_num_threads",
    "logsumexp_axis", "logsumexp_grad_rows", "logsumexp_rows", "set_num_threads",
    "set_simd_tier", "simd_tier", "softmax_rows",
]

#: An array the kernels read or write in place.
_Memory: TypeAlias = npt.NDArray[np.generic] | tuple[int, int, int, object]
#: A cross-entropy call: (logits, (rows, cols), target, weight, ignore_index,
#: label_smoothing, lse_square_scale); the target holds class indices or probabilities of
#: the logits' dtype, the weight one value per class of the compute dtype.
_Problem: TypeAlias = tuple[_Memory, tuple[int, int], _Memory, _Memory | None, int, float, float]

def logsumexp_rows(x: _Memory, cols: int, out: _Memory) -> None:
    """log Σ exp over each row of `cols` values of `x`, one value per row into `out`."""

def logsumexp_axis(x: _Memory, shape: tuple[int, int, int], out: _Memory) -> None:
    """log Σ exp over axis 1 of a C-contiguous (outer, steps, inner) float32/float64
    array, into `out` of (outer, inner)."""

def softmax_rows(x: _Memory, cols: int, out: _Memory, log: bool) -> None:
    """softmax (or log-softmax) over each row of `cols` values of `x`, into `out`."""

def logsumexp_grad_rows(x: _Memory, cols: int, scale: _Memory, out: _Memory) -> None:
    """The gradient of each row's log-sum-exp, scale[r]·softmax(x[r]), into `out` (0 on a
    row of all −inf); `scale` one float64 per row."""

def cross_entropy_rows(
    problem: _Problem,
    loss: _Memory | None = None,
    lse: _Memory | None = None,
    hits: _Memory | None = None,
) -> tuple[float, float]:
    """Per-row losses (float64), log-sum-exps and hits (uint8), each where given; returns
    (sum of losses, mean denominator)."""

def cross_entropy_grad_rows(
    problem: _Problem,
    scale: str | float,
    grad: _Memory | None,
    loss: _Memory | None = None,
    lse: _Memory | None = None,
    hits: _Memory | None = None,
) -> tuple[float, float]:
    """Fused forward and gradient, scaled as the reduction `scale` or by the number
    `scale`; `grad=None` overwrites the logits with the gradient."""

def cross_entropy_backward_rows(
    problem: _Problem,
    lse: _Memory,
    scale: float,
    scale_rows: _Memory | None,
    grad: _Memory,
) -> None:
    """Gradient from saved log-sum-exps, scaled per row (float64) or uniformly, into
    `grad`."""

def check_labels(
    target: _Memory,
    classes: int,
    ignore_index: int,
    weight: _Memory | None = None,
) -> float:
    """IndexError for a label outside [0, classes) that is not `ignore_index`; else the
    `mean` denominator (summed float64 weights of the non-ignored labels, or their
    count)."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def follow_threads(n: int) -> None:
    """The calling framework's thread count, used while mlecore has none of its own."""

def simd_tier() -> str: ...
def detected_simd_tier() -> str: ...
def set_simd_tier(name: str) -> str: ...
