"""Shared fixtures and float64 references for the Python tests.

torch is imported only by tests marked `torch` (and by the modules that test mlecore.torch),
so the numpy API's tests run where torch is absent: `pytest -m "not torch"` there.
"""

import importlib.util
import os
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

#: Class counts that hit every SIMD tail (8 and 16 lanes), chunk (2048) and segment edge.
CLASS_COUNTS = [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 100, 2047, 2048, 2049, 4097]

HAS_TORCH = importlib.util.find_spec("torch") is not None
#: Modules that test mlecore.torch (test_torch*.py) or compare against torch throughout.
TORCH_MODULES = sorted(p.name for p in Path(__file__).parent.glob("test_torch*.py")) + [
    "test_bench.py"]
#: The Dask tests need dask and distributed (the `dask` extra, in the `test` extra).
DASK_MODULES = ["test_dask.py"]
HAS_DASK = all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))
collect_ignore = ([] if HAS_TORCH else TORCH_MODULES) + ([] if HAS_DASK else DASK_MODULES)


# The property suite's profiles: CI runs the same small set every time; `make fuzz` runs many.
# Applied to each property test (`PROPERTIES`), since importing torch's test utilities loads
# a profile of torch's own as the default.
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None,
                          print_blob=True)
settings.register_profile("fuzz", max_examples=3000, deadline=None, print_blob=True)
PROPERTIES = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: Modules whose tests start processes or clusters (tens of seconds each): `make test` runs
#: them against the development build; the second run, against the installed wheel, leaves
#: them out (`-m "not processes"`), since they test no more of the wheel than the rest.
PROCESS_MODULES = ["test_torch_distributed.py", "test_dask.py", "test_bench.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs torch (as a reference or under test)")
    config.addinivalue_line("markers", "processes: starts processes or clusters (slow)")


def pytest_terminal_summary(terminalreporter):
    """Which SIMD tiers this run could exercise: the tier-parametrized tests (and the Rust
    tests, `each_tier`) run every tier the CPU has; the others need another machine (NEON:
    `make test-aarch64` under qemu)."""
    try:
        from mlecore import _mlecore as ext
    except ImportError:
        return
    old, ran, missing = ext.simd_tier(), [], []
    try:
        for tier in ("avx512", "avx2", "neon", "scalar"):
            # The name it gives back may say more ("avx2+fma").
            (ran if ext.set_simd_tier(tier).startswith(tier) else missing).append(tier)
    finally:
        ext.set_simd_tier(old)
    terminalreporter.write_line(
        f"SIMD tiers: detected {ext.detected_simd_tier()}, default {old}; tier tests ran on "
        f"{', '.join(ran)}; not on this CPU: {', '.join(missing) or 'none'}")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.fspath.basename in TORCH_MODULES:
            item.add_marker(pytest.mark.torch)
        if item.fspath.basename in PROCESS_MODULES:
            item.add_marker(pytest.mark.processes)


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs, so failures reproduce.
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _class_last(a, ndim):
    return a if ndim <= 2 else np.moveaxis(a, 1, -1)


def numpy_ce(x, target, weight=None, ignore_index=-100, reduction="mean",
             label_smoothing=0.0, softcap=None, lse_square_scale=0.0):
    """torch's cross_entropy semantics written out in float64 numpy: per element,
    Σ_c v_c·(lse − x_c) with v = (1 − ε)·w_y·onehot(y) + (ε/C)·w for class indices and
    v = w·((1 − ε)·t + ε/C) for probabilities; the weighted mean divides by Σ w_y (indices)
    or the element count (probabilities). With `softcap` c the logits are c·tanh(x/c) first;
    with `lse_square_scale` s each counted element adds s·lse²."""
    return _numpy_ce(x, target, weight, ignore_index, reduction, label_smoothing, softcap,
                     lse_square_scale)[0]


def numpy_ce_grad(x, target, **kw):
    """The loss and d(loss.sum())/dx: per element, scale·(A·softmax(x) − v), A = Σ v (plus
    2·s·lse for the z-loss), times 1 − (s/c)² through a soft-cap."""
    return _numpy_ce(np.asarray(x), target, **kw)[:2]


def numpy_ce_stats(x, target, **kw):
    """(loss, z_loss, lse per element, accuracy) of `numpy_ce`, as `return_stats` gives."""
    return _numpy_ce(np.asarray(x), target, **kw)[2]


def _numpy_ce(x, target, weight=None, ignore_index=-100, reduction="mean",
              label_smoothing=0.0, softcap=None, lse_square_scale=0.0):
    x = np.asarray(x, dtype=np.float64)
    raw = x
    if softcap is not None:
        x = softcap * np.tanh(x / softcap)
    t = np.asarray(target)
    nd = x.ndim
    xr = _class_last(x, nd)
    c = xr.shape[-1]
    eps, z = label_smoothing, lse_square_scale
    # lse − x = (m − x) + log1p(count of maxima − 1 + Σ e^(x − m) over the rest): no
    # cancellation where one logit dominates.
    m = np.max(xr, axis=-1, keepdims=True) if c else np.zeros(xr.shape[:-1] + (1,))
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore"):
        e = np.exp(xr - m)
        top = xr == m
        rest = np.where(top, 0.0, e).sum(-1, keepdims=True)
        excess = np.log1p(top.sum(-1, keepdims=True) - 1 + rest)
        d = (m - xr) + excess
    lse = (m + excess)[..., 0]
    p = np.exp(-d)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    if t.dtype.kind in "iu":
        valid = t.astype(np.int64) != ignore_index
        y = np.where(valid, t, 0).astype(np.int64)
        v = (eps / c) * np.broadcast_to(w, xr.shape).copy()
        np.put_along_axis(v, y[..., None], np.take_along_axis(v, y[..., None], -1)
                          + (1 - eps) * w[y][..., None], -1)
        v = np.where(valid[..., None], v, 0.0)
        denom = np.sum(np.where(valid, w[y], 0.0))
        best = y
    else:
        tr = _class_last(t.astype(np.float64), nd)
        v = w * ((1 - eps) * tr + eps / c)
        denom = float(v.shape[0] * np.prod(v.shape[1:-1])) if v.ndim > 1 else 1.0
        valid = np.ones(lse.shape, bool)
        best = np.argmax(tr, axis=-1)
    with np.errstate(invalid="ignore"):
        terms = np.where(v == 0, 0.0, v * d)
    z_rows = np.where(valid, z * lse * lse, 0.0)
    loss = terms.sum(-1) + z_rows
    a = v.sum(-1, keepdims=True) + (2 * z * np.where(valid, lse, 0.0)[..., None] if z else 0)
    grad = a * p - v
    right = np.take_along_axis(xr, best[..., None], -1)[..., 0] == xr.max(-1) if c else valid
    n = valid.sum()
    accuracy = float(right[valid].sum()) / n if n else float("nan")

    def reduce(rows):
        if reduction == "none":
            return rows
        if reduction == "sum":
            return rows.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.float64(rows.sum()) / np.float64(denom)

    out = reduce(loss)
    if reduction == "mean":
        # torch's rule: with nothing to average over, the loss is NaN and the gradient 0
        # (every row's v is 0 then).
        grad = grad / denom if denom else grad
    if softcap is not None:
        grad = grad * (1 - np.tanh(_class_last(raw, nd) / softcap) ** 2)
    grad = grad if nd <= 2 else np.moveaxis(grad, -1, 1)
    stats = (np.asarray(out), np.asarray(reduce(z_rows)), lse, accuracy)
    return np.asarray(out), grad.reshape(x.shape), stats


def torch_ce(x, target, **kw):
    """torch's cross_entropy in float64 on numpy inputs."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.array(x, dtype=np.float64))
    t = np.asarray(target)
    tt = torch.from_numpy(np.array(t, dtype=np.int64 if t.dtype.kind in "iu" else np.float64))
    if kw.get("weight") is not None:
        kw["weight"] = torch.from_numpy(np.asarray(kw["weight"], dtype=np.float64))
    return F.cross_entropy(xt, tt, **kw).numpy()


def torch_ce_grad(x, target, **kw):
    """torch's loss and gradient (of the sum for reduction='none') in float64."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_()
    t = np.asarray(target)
    tt = torch.from_numpy(np.array(t, dtype=np.int64 if t.dtype.kind in "iu" else np.float64))
    if kw.get("weight") is not None:
        kw["weight"] = torch.from_numpy(np.asarray(kw["weight"], dtype=np.float64))
    loss = F.cross_entropy(xt, tt, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


class Reference:
    """A float64 cross-entropy reference: `ce(x, t, **kw)` and `ce_grad(x, t, **kw)`."""

    def __init__(self, name, ce, ce_grad):
        self.name, self.ce, self.ce_grad = name, ce, ce_grad


@pytest.fixture(params=["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def ref(request):
    """Each cross-entropy reference: mlecore's float64 numpy transcription of torch's
    semantics, and torch itself (where torch is installed)."""
    if request.param == "torch":
        pytest.importorskip("torch")
        return Reference("torch", torch_ce, torch_ce_grad)
    return Reference("numpy", numpy_ce, numpy_ce_grad)


def tol(dtype):
    """(rtol, atol) for comparing a result of `dtype` with a float64 reference."""
    return {
        np.float64: (1e-11, 1e-12),
        np.float32: (2e-5, 2e-6),
        np.float16: (5e-3, 5e-3),
    }[np.dtype(dtype).type]


def ticks_while(run) -> tuple[int, float]:
    """(how often another Python thread ticked, seconds) while `run()` ran: with the GIL
    held throughout, the other thread cannot tick at all."""
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.01)
    start = time.perf_counter()
    try:
        run()
    finally:
        end = time.perf_counter()
        done.set()
        thread.join()
    return len([s for s in ticks if start < s < end]), end - start
