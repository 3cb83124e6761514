"""The compiled kernels (Rust, PyO3). Arrays must be C-contiguous and aligned; the package
validates and lays them out (`mlecore._arrays`, `mlecore._kernels`)."""

from typing import Protocol

import numpy as np
import numpy.typing as npt

__version__: str

class CeProblem(Protocol):
    """What the cross-entropy kernels read: `mlecore._kernels.CeRows` has these attributes."""

    x: npt.NDArray[np.floating] | npt.NDArray[np.uint16]
    target: npt.NDArray[np.integer] | npt.NDArray[np.floating]
    weight: npt.NDArray[np.floating] | None
    ignore_index: int
    label_smoothing: float

def logsumexp_rows(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None:
    """log Σ exp over the last axis of a 2-D array, one value per row into `out`."""

def logsumexp_axis(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating]) -> None:
    """log Σ exp over axis 1 of a C-contiguous (outer, steps, inner) float32/float64 array."""

def softmax_rows(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], log: bool) -> None:
    """softmax (or log-softmax) over the last axis of a 2-D array into `out`."""

def cross_entropy_rows(
    problem: CeProblem,
    loss: npt.NDArray[np.float64],
    lse: npt.NDArray[np.floating],
) -> tuple[float, float]:
    """Per-row losses and log-sum-exps; returns (sum of losses, mean denominator)."""

def cross_entropy_grad_rows(
    problem: CeProblem,
    reduction: str,
    grad: npt.NDArray[np.floating] | None,
    loss: npt.NDArray[np.float64],
    lse: npt.NDArray[np.floating],
) -> tuple[float, float]:
    """Fused forward and gradient; `grad=None` overwrites `problem.x` with the gradient."""

def cross_entropy_backward_rows(
    problem: CeProblem,
    lse: npt.NDArray[np.floating],
    scale: float,
    scale_rows: npt.NDArray[np.float64] | None,
    grad: npt.NDArray[np.floating],
) -> None:
    """Gradient from saved log-sum-exps, scaled per row or uniformly, into `grad`."""

def check_labels(
    target: npt.NDArray[np.integer],
    classes: int,
    ignore_index: int,
    weight: npt.NDArray[np.float64] | None = None,
) -> float:
    """IndexError for a label outside [0, classes) that is not `ignore_index`; else the
    `mean` denominator (summed weights of the non-ignored labels, or their count)."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_tier() -> str: ...
def detected_simd_tier() -> str: ...
def set_simd_tier(name: str) -> str: ...
