"""Memory for the CPU kernels' full-size results, reused once nothing refers to it.

A fresh 0.5 GB gradient costs more in first-touch page faults than computing it (autograd asks
for a new gradient every step). The pool remembers the storages of the last `KEEP` large
results, whether in use or not, and hands one out again only when no tensor uses it any more
(its reference count is the pool's own). It never holds more than `KEEP` storages: an older
result is forgotten, and freed as usual when its tensors are. The storages are torch's own,
so pooled results behave as any tensor (`resize_`, `out=`, storage resizing).
"""

from __future__ import annotations

import math
import os
import threading

import torch

#: Results smaller than this are allocated as usual.
MIN_BYTES = 4 << 20
#: How many storages the pool remembers (the most recently handed out).
KEEP = 2


def _users(storage: torch.UntypedStorage) -> int:
    """How many references the storage has (tensors using it, and the pool's own)."""
    return torch._C._storage_Use_Count(storage._cdata)


class BufferPool:
    def __init__(self, keep: int = KEEP, min_bytes: int = MIN_BYTES):
        self._storages: list[torch.UntypedStorage] = []  # the most recent last
        self._keep = keep
        self._min_bytes = min_bytes
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A thread of the parent may hold the lock when another forks.
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized contiguous CPU tensor, on reused memory when a free storage of
        the same size is remembered."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self._min_bytes:
            # Sizes as separate ints: torch parses a sequence of sizes a microsecond slower.
            return torch.empty(*shape, dtype=dtype)
        return self._reused(shape, dtype, nbytes)

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """`empty` of a contiguous CPU tensor's shape and dtype (for a small one, half the
        cost of building the shape)."""
        nbytes = t.numel() * t.dtype.itemsize
        if nbytes < self._min_bytes:
            return torch.empty_like(t)
        return self._reused(t.shape, t.dtype, nbytes)

    def _reused(self, shape, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
        shape = tuple(shape)
        with self._lock:
            for i, s in enumerate(self._storages):
                if s.nbytes() == nbytes and _users(s) == 1:
                    storage = self._storages.pop(i)
                    break
            else:
                storage = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
            self._storages.append(storage)
            del self._storages[: -self._keep]
            return torch.empty(0, dtype=dtype).set_(storage, 0, shape)

    def clear(self) -> None:
        """Forget every storage (memory in use stays with its tensors)."""
        with self._lock:
            self._storages.clear()

    def __len__(self) -> int:
        return len(self._storages)


POOL = BufferPool()


def release_buffers() -> None:
    """Drop the gradient memory mlecore.torch keeps for reuse.

    mlecore.torch reuses the memory of its last two large CPU results (gradients, log-softmax
    outputs) once no tensor refers to it, since fresh memory costs more in page faults than the
    kernel itself. This releases it.

    Examples
    --------
    >>> import mlecore.torch as mt
    >>> mt.release_buffers()
    """
    POOL.clear()
