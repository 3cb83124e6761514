"""Which implementation serves a call: the numpy path, or mlecore.torch for torch tensors.

torch is never imported here: a tensor can only exist if the caller imported torch already.
"""

from __future__ import annotations

import functools
import sys

BACKENDS = ("auto", "rust", "torch")


def is_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class _Bound:
    """mlecore.torch's functions with `backend` filled in."""

    def __init__(self, backend: str):
        self._backend = backend

    def __getattr__(self, name):
        from . import torch as mt

        return functools.partial(getattr(mt, name), backend=self._backend)


def check_backend(backend: str) -> str:
    """`backend`, or ValueError when it is not one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def route(x, backend: str):
    """mlecore.torch's functions when `x` is a tensor, None for the numpy path."""
    check_backend(backend)
    if is_tensor(x):
        return _Bound(backend)
    if backend == "torch":
        raise ValueError("backend='torch' needs torch tensors; numpy input always runs in Rust")
    return None
