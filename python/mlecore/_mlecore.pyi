"""The compiled kernels (Rust, PyO3). Arrays must be C-contiguous; the package validates."""

import numpy as np
import numpy.typing as npt

__version__: str

def logsumexp_rows(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None:
    """log Σ exp over the last axis of a 2-D array, one value per row into `out`."""

def logsumexp_axis(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None:
    """log Σ exp over axis 1 of a C-contiguous (outer, steps, inner) float32/float64 array."""

def softmax_rows(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], log: bool) -> None:
    """softmax (or log-softmax) over the last axis of a 2-D array into `out`."""

def cross_entropy_rows(
    x: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    weight: npt.NDArray[np.floating] | None,
    ignore_index: int,
    label_smoothing: float,
    loss: npt.NDArray[np.float64],
    lse: npt.NDArray[np.floating],
) -> tuple[float, float]:
    """Per-row losses and log-sum-exps; returns (sum of losses, mean denominator)."""

def cross_entropy_grad_rows(
    x: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    weight: npt.NDArray[np.floating] | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    grad: npt.NDArray[np.floating] | None,
    loss: npt.NDArray[np.float64],
    lse: npt.NDArray[np.floating],
) -> tuple[float, float]:
    """Fused forward and gradient; `grad=None` overwrites `x` with the gradient."""

def cross_entropy_backward_rows(
    x: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    weight: npt.NDArray[np.floating] | None,
    ignore_index: int,
    label_smoothing: float,
    lse: npt.NDArray[np.floating],
    scale: float,
    scale_rows: npt.NDArray[np.float64] | None,
    grad: npt.NDArray[np.floating],
) -> None:
    """Gradient from saved log-sum-exps, scaled per row or uniformly, into `grad`."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_tier() -> str: ...
def detected_simd_tier() -> str: ...
def set_simd_tier(name: str) -> str: ...
