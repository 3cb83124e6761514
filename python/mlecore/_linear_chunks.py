"""The chunk loop of the fused linear cross-entropy, on numpy arrays: the loss of logits
x·wᵀ + b without holding the (N, C) logits. Rows go in chunks: a chunk's logits (one BLAS
call), the Rust fused loss and gradient over them in place, then the chunk's share of dx
(g·w) and dw (gᵀ·x, added into dw by BLAS with beta = 1, so no temporary of dw's size).

`mlecore.linear_cross_entropy` runs it on arrays; `mlecore.torch.linear_cross_entropy` runs
the same loop in torch's operations (`torch/_linear_kernels.py`), so that a torch user's
products go through torch's BLAS and thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import prob_hits, softcap_into
from ._kernels import CeRows, check_labels

#: The default chunk: FAST_ROWS rows unless their logits pass MAX_CHUNK_BYTES, and logits of
#: CHUNK_BYTES where rows are short. Each chunk streams w through the three matrix products
#: and dw through the last (about 4·C·D·itemsize bytes of memory traffic however few its
#: rows), so a chunk needs thousands of rows for that traffic to hide behind its arithmetic.
#: Measured here: on the GPT-2 head (D = 768, V = 50257) 512-row chunks cost 1.14× the bare
#: products and 1024-row chunks 1.06×; at D = 1024, V = 32000, 1024 rows 1.14× and 2048 rows
#: 1.06×.
CHUNK_BYTES = 128 << 20
FAST_ROWS = 2048
MAX_CHUNK_BYTES = 256 << 20


def chunk_rows(n: int, classes: int, itemsize: int, chunk_size: int | None) -> int:
    """Rows per chunk: `chunk_size` when given; else the rule above (at least 16 rows), the
    rows spread evenly over the fewest chunks; never more than `n`."""
    if chunk_size is not None:
        return max(1, min(chunk_size, n))
    row = max(1, classes * itemsize)
    most = max(16, CHUNK_BYTES // row, min(FAST_ROWS, MAX_CHUNK_BYTES // row))
    chunks = -(-n // most)
    return max(1, -(-n // max(1, chunks)))


def _gemm():
    """scipy's BLAS (gemm with beta = 1 adds into dw in place), or None without scipy (the
    numpy API needs only numpy: then each chunk's gᵀ·x goes through a temporary)."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - scipy is a test dependency
        return None
    return blas


def add_outer(dw: np.ndarray, g: np.ndarray, xc: np.ndarray, blas, first: bool) -> None:
    """dw += gᵀ·xc (dw = gᵀ·xc for the `first` chunk: no zeroing pass, and no read of dw).
    With BLAS: gemm on the transposes, in place (dw C-contiguous is dwᵀ in Fortran order).
    Without: a product into a temporary, then an addition."""
    if first:
        np.matmul(g.T, xc, out=dw)
    elif dw.size == 0:  # no features or no classes: nothing to add (f2py refuses the operands)
        return
    elif blas is not None and dw.flags.c_contiguous and g.flags.c_contiguous \
            and xc.flags.c_contiguous and dw.dtype in (np.float32, np.float64):
        gemm = blas.sgemm if dw.dtype == np.float32 else blas.dgemm
        # dwᵀ (D, C) ← xcᵀ (D, B) · g (B, C) + dwᵀ; every operand is Fortran-ordered as given.
        out = gemm(1.0, xc.T, g.T, beta=1.0, c=dw.T, trans_b=1, overwrite_c=1)
        if not np.shares_memory(out, dw):  # f2py copied c after all: put the sum back
            dw[...] = out.T
    else:
        dw += g.T @ xc


@dataclass
class Linear:
    """A validated linear cross-entropy call: x (N, D), w (C, D), b (C,) or None, targets
    (N,) indices or (N, C) probabilities, in the compute dtype."""

    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    target: np.ndarray
    weight: np.ndarray | None
    ignore_index: int
    label_smoothing: float
    softcap: float | None
    lse_square_scale: float
    reduction: str
    chunk: int
    is_index: bool
    target_shape: tuple
    loss_shape: tuple
    dtype: np.dtype

    @property
    def classes(self) -> int:
        return self.w.shape[0]

    def denominator(self) -> float:
        """The mean's denominator over all rows (checks every label first)."""
        if not self.is_index:
            return float(self.x.shape[0])
        w = None if self.weight is None else self.weight.astype(np.float64)
        return check_labels(self.target.reshape(self.target_shape), self.classes,
                            self.ignore_index, w)


@dataclass
class Grads:
    """Where a pass puts its gradients: any of dx (N, D), dw (C, D), db (C,) (None: not
    wanted), each C-contiguous in the compute dtype (db may be float64); dw and db are
    overwritten. Rows are scaled by the reduction's factor, or by `row_scale` (N,) when given
    (the backward pass of reduction="none")."""

    dx: np.ndarray | None = None
    dw: np.ndarray | None = None
    db: np.ndarray | None = None
    row_scale: np.ndarray | None = None

    @staticmethod
    def allocate(p: Linear) -> Grads:
        n, d = p.x.shape
        return Grads(np.empty((n, d), p.x.dtype), np.empty((p.classes, d), p.x.dtype),
                     np.empty(p.classes, np.float64) if p.b is not None else None)


@dataclass
class Pass:
    """What a pass returns: per-row losses (float64), log-sum-exps, hits (or None), their
    sum and the mean's denominator."""

    loss: np.ndarray
    lse: np.ndarray
    hits: np.ndarray | None
    total: float
    denom: float


def run(p: Linear, stats: bool, grads: Grads | None = None) -> Pass:
    """The chunk loop: each chunk's logits by BLAS into one reused buffer, the Rust kernel
    over them (in place, with the gradient when `grads` is given), then the chunk's share of
    dx = g·w, dw += gᵀ·x and db += Σ g."""
    n = p.x.shape[0]
    c = p.classes
    cdt = p.x.dtype
    denom = p.denominator()
    g = grads if grads is not None and any(
        a is not None for a in (grads.dx, grads.dw, grads.db)) else None
    if g is not None and g.row_scale is None:
        scale = (1.0 / denom if denom else 0.0) if p.reduction == "mean" else 1.0
    else:
        scale = 1.0
    loss = np.empty(n)
    lse = np.empty(n, cdt)
    hits = np.empty(n, np.uint8) if stats else None
    for acc in (g.dw, g.db) if g is not None and n == 0 else ():
        if acc is not None:  # no chunk writes them
            acc[...] = 0
    blas = _gemm() if g is not None and g.dw is not None else None
    zbuf = np.empty((min(p.chunk, max(n, 1)), c), cdt)
    sbuf = np.empty_like(zbuf) if (g is not None and p.softcap is not None) else None
    judged = []
    for i in range(0, n, p.chunk):
        j = min(n, i + p.chunk)
        zc = zbuf[: j - i]
        np.matmul(p.x[i:j], p.w.T, out=zc)
        if p.b is not None:
            zc += p.b
        logits = zc
        if p.softcap is not None:
            logits = softcap_into(zc, p.softcap, out=sbuf[: j - i] if sbuf is not None else zc)
        if stats and not p.is_index:
            # On the logits the loss sees (soft-capped), as cross_entropy and class indices
            # judge them; before the kernel overwrites them with their gradient.
            judged.append(prob_hits(logits, p.target[i:j]))
        rows = CeRows(logits, p.target[i:j], p.weight, p.ignore_index, p.label_smoothing,
                      p.lse_square_scale, p.target[i:j].shape[:1], c)
        h = hits[i:j] if hits is not None and p.is_index else None
        if g is None:
            rows.forward(loss[i:j], lse[i:j], h)
            continue
        # The gradient of the chunk's logits: in place over them, or (soft-capped) into zc,
        # the capped values kept in `logits` for the chain rule.
        rows.fused(scale, None if logits is zc else zc, loss[i:j], lse[i:j], h)
        if logits is not zc:  # 1 − (s/c)², in the capped values' own buffer
            np.divide(logits, p.softcap, out=logits)
            np.square(logits, out=logits)
            np.subtract(1.0, logits, out=logits)
            zc *= logits
        if g.row_scale is not None:
            zc *= g.row_scale[i:j, None].astype(cdt)
        if g.dx is not None:
            np.matmul(zc, p.w, out=g.dx[i:j])
        if g.dw is not None:
            add_outer(g.dw, zc, p.x[i:j], blas, i == 0)
        if g.db is not None:
            column_sums = zc.sum(axis=0, dtype=np.float64)
            if i == 0:
                g.db[...] = column_sums
            else:
                g.db += column_sums
    if stats and not p.is_index:
        hits = np.concatenate(judged) if judged else np.zeros(0, bool)
    return Pass(loss, lse, hits, float(np.sum(loss)), denom)


