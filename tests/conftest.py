"""Shared fixtures and float64 references for the Python tests."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: Class counts that hit every SIMD tail (8 and 16 lanes), chunk (2048) and segment edge.
CLASS_COUNTS = [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 100, 2047, 2048, 2049, 4097]


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs, so failures reproduce.
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def torch_ce(x, target, **kw):
    """torch's cross_entropy in float64 on numpy inputs."""
    xt = torch.from_numpy(np.array(x, dtype=np.float64))
    t = np.asarray(target)
    tt = torch.from_numpy(np.array(t, dtype=np.int64 if t.dtype.kind in "iu" else np.float64))
    if kw.get("weight") is not None:
        kw["weight"] = torch.from_numpy(np.asarray(kw["weight"], dtype=np.float64))
    return F.cross_entropy(xt, tt, **kw).numpy()


def torch_ce_grad(x, target, **kw):
    """torch's loss and gradient (of the sum for reduction='none') in float64."""
    xt = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_()
    t = np.asarray(target)
    tt = torch.from_numpy(np.array(t, dtype=np.int64 if t.dtype.kind in "iu" else np.float64))
    if kw.get("weight") is not None:
        kw["weight"] = torch.from_numpy(np.asarray(kw["weight"], dtype=np.float64))
    loss = F.cross_entropy(xt, tt, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


def tol(dtype):
    """(rtol, atol) for comparing a result of `dtype` with a float64 reference."""
    return {
        np.float64: (1e-11, 1e-12),
        np.float32: (2e-5, 2e-6),
        np.float16: (5e-3, 5e-3),
    }[np.dtype(dtype).type]
