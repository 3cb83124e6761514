"""Memory for the CPU kernels' full-size results, reused once nothing refers to it.

A fresh 0.5 GB gradient costs more in first-touch page faults than computing it (autograd asks
for a new gradient every step). The pool keeps the numpy arrays behind the last few large
results; a tensor made by `torch.from_numpy` holds a reference to its array for as long as any
tensor or view uses the memory, so an array whose reference count is back to the pool's own is
free to hand out again.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

#: Results smaller than this are allocated as usual.
MIN_BYTES = 4 << 20
#: How many arrays the pool keeps (the most recently used).
KEEP = 2

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.bfloat16: np.uint16}


class BufferPool:
    def __init__(self, keep: int = KEEP, min_bytes: int = MIN_BYTES):
        self._arrays: list[np.ndarray] = []
        self._keep = keep
        self._min_bytes = min_bytes
        self._lock = threading.Lock()

    def _free(self, i: int) -> bool:
        # The list's reference and getrefcount's argument: nobody else holds the array.
        return sys.getrefcount(self._arrays[i]) == 2

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized CPU tensor, on reused memory when a free array fits."""
        np_dtype = np.dtype(_NUMPY[dtype])
        nbytes = int(np.prod(shape)) * np_dtype.itemsize
        if nbytes < self._min_bytes:
            return torch.empty(shape, dtype=dtype)
        shape = tuple(shape)
        with self._lock:
            for i in range(len(self._arrays)):
                if self._arrays[i].shape == shape and self._arrays[i].dtype == np_dtype \
                        and self._free(i):
                    array = self._arrays.pop(i)
                    break
            else:
                array = np.empty(shape, np_dtype)
                # Drop the oldest free arrays beyond the limit (never one in use).
                while len(self._arrays) >= self._keep:
                    free = [i for i in range(len(self._arrays)) if self._free(i)]
                    if not free:
                        break
                    self._arrays.pop(free[0])
            self._arrays.append(array)
            tensor = torch.from_numpy(array)
        return tensor.view(dtype) if dtype == torch.bfloat16 else tensor

    def clear(self) -> None:
        """Forget every array (memory in use stays with its tensors)."""
        with self._lock:
            self._arrays.clear()


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
